//! Applying a plan, step by step, each recorded; a failing step undoes the steps
//! before it.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cmdline::{self, Kind, GRUB_DEFAULT};
use crate::divert::{Diversion, State};
use crate::files::{under, write_atomic};
use crate::platform::HOOK_SOURCE;
use crate::runner::{command_line, Ran};

use super::*;

/// Create `dir` and its missing parents, recording each one created.
pub(super) fn create_dirs(root: &Path, dir: &Path, state: &mut InstallState) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_owned());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.iter().rev() {
        fs::create_dir(m).with_context(|| format!("cannot create {}", m.display()))?;
        let host_path = Path::new("/").join(m.strip_prefix(root).unwrap_or(m));
        state
            .created_dirs
            .push(host_path.to_string_lossy().into_owned());
    }
    Ok(())
}

/// Apply the plan; on failure undo what was done, then report the failure.
pub fn apply(plan: &Plan, host: &Run<'_>) -> Result<Vec<String>> {
    let had_state_file = state_path(host.root).exists();
    let original = read_state(host.root)?;
    let mut state = original.clone();
    state.exact = original.exact || original.files.is_empty();
    for dir in &host.lock_dirs_created {
        if !state.created_dirs.contains(dir) {
            state.created_dirs.push(dir.clone());
        }
    }
    let mut done: Vec<String> = Vec::new();
    if let Err(err) = apply_steps(plan, host, &mut state, &mut done) {
        eprintln!("gpu-passthrough: install failed: {err:#}");
        eprintln!("gpu-passthrough: undoing the {} step(s) done", done.len());
        // What this run added to the state is what to undo.
        let added = |all: &[String], old: &[String]| -> Vec<String> {
            all.iter().filter(|x| !old.contains(x)).cloned().collect()
        };
        let undo = InstallState {
            files: state.files[original.files.len()..].to_vec(),
            kernel_args: added(&state.kernel_args, &original.kernel_args),
            exact: state.exact,
            hook: state.hook.clone().filter(|_| original.hook.is_none()),
            diverted: state.diverted && !original.diverted,
            metrics_timer: state.metrics_timer && !original.metrics_timer,
            created_dirs: added(&state.created_dirs, &original.created_dirs),
        };
        let report = undo_state(&undo, host, true);
        if !report.failed.is_empty() {
            // Keep what is needed to finish the undo by hand: the record of this run
            // too, and every backup.
            let mut kept = original.clone();
            kept.files.extend(report.remaining.files);
            kept.kernel_args.extend(report.remaining.kernel_args);
            kept.hook = kept.hook.or(report.remaining.hook);
            kept.diverted |= report.remaining.diverted;
            kept.metrics_timer |= report.remaining.metrics_timer;
            kept.created_dirs = state.created_dirs.clone();
            write_state(host.root, &kept)?;
            for f in &report.failed {
                eprintln!("gpu-passthrough: undo step failed: {f}");
            }
            bail!(
                "install failed, and undoing it failed in {} step(s) (above); what is left to \
                 undo is recorded in {}: fix the cause, then run `gpu-passthrough uninstall`",
                report.failed.len(),
                state_path(host.root).display()
            );
        }
        // The record as it was before this run.
        if had_state_file {
            write_state(host.root, &original)?;
        } else {
            let _ = fs::remove_file(state_path(host.root));
            remove_lock_dirs(host);
        }
        bail!("install failed and was undone; nothing changed");
    }
    write_state(host.root, &state)?;
    Ok(done)
}

/// A run that changed nothing leaves no lock directories behind that it created.
pub fn remove_lock_dirs(host: &Run<'_>) {
    if host.lock_dirs_created.is_empty() {
        return;
    }
    let _ = fs::remove_file(under(host.root, &format!("{STATE_DIR}/lock")));
    for dir in host.lock_dirs_created.iter().rev() {
        let _ = fs::remove_dir(under(host.root, dir));
    }
}

pub(super) fn apply_steps(
    plan: &Plan,
    host: &Run<'_>,
    state: &mut InstallState,
    done: &mut Vec<String>,
) -> Result<()> {
    for f in &plan.files {
        let full = under(host.root, f.path);
        record_before(host, state, f.path)?;
        create_dirs(
            host.root,
            full.parent().expect("a file has a parent"),
            state,
        )?;
        write_atomic(&full, &f.new, f.mode)?;
        record_after(host, state, f.path)?;
        done.push(format!("wrote {}", f.path));
    }
    if let Some((full, path)) = &plan.hook {
        create_dirs(
            host.root,
            full.parent().expect("a link has a parent"),
            state,
        )?;
        let _ = fs::remove_file(full);
        std::os::unix::fs::symlink(HOOK_SOURCE, full)
            .with_context(|| format!("cannot link {} to {HOOK_SOURCE}", full.display()))?;
        state.hook = Some(path.to_string());
        write_state(host.root, state)?;
        done.push(format!("linked {path} -> {HOOK_SOURCE}"));
    }
    if plan.divert {
        let was_diverted = matches!(Diversion::under(host.root).state()?, State::Diverted { .. });
        let outcome = Diversion::under(host.root).divert(host.runner)?;
        state.diverted |= !was_diverted;
        write_state(host.root, state)?;
        done.push(format!("divert: {}", outcome.steps.join("; ")));
    }
    if plan.grub_default.is_some() || !plan.kernel_args.is_empty() {
        // Every file grubby may touch is recorded before it runs.
        let boot_files = cmdline::files(host.root);
        for path in &boot_files {
            record_before(host, state, path)?;
        }
        if let Some(args) = grubby_args(plan) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            done.push(match host.runner.run("grubby", &args)? {
                Ran::Done(_) => format!("grubby: ran {}", command_line("grubby", &args)),
                Ran::Skipped(why) => format!("grubby: {why}"),
            });
        }
        let grub = under(host.root, GRUB_DEFAULT);
        if let Ok(text) = fs::read_to_string(&grub) {
            if let Some(new) = cmdline::edit(Kind::GrubDefault, &text, &plan.all_args, &[]) {
                write_atomic(&grub, new.as_bytes(), mode_of(&grub).unwrap_or(0o644))?;
                done.push(format!("wrote {GRUB_DEFAULT} (GRUB_CMDLINE_LINUX)"));
            }
        }
        for path in &boot_files {
            record_after(host, state, path)?;
        }
        for a in &plan.kernel_args {
            if !state.kernel_args.contains(a) {
                state.kernel_args.push(a.clone());
            }
        }
        write_state(host.root, state)?;
    }
    for (program, args) in commands(plan) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = host.runner.run(program, &args)?;
        if program == "systemctl" {
            state.metrics_timer = true;
            write_state(host.root, state)?;
        }
        done.push(match ran {
            Ran::Done(_) => format!("{program}: ran {}", command_line(program, &args)),
            Ran::Skipped(why) => format!("{program}: {why}"),
        });
    }
    Ok(())
}
