//! Undo: files back exactly (or only what install added taken out of an edited one),
//! kernel arguments out, the hook link and the diversion removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cmdline::{self, Kind};
use crate::divert::Diversion;
use crate::files::{under, write_atomic};
use crate::platform::HOOK_SOURCE;
use crate::runner::{command_line, Ran};

use super::*;

/// What an undo did, what failed, and what is left to undo.
pub(super) struct UndoReport {
    pub(super) done: Vec<String>,
    pub(super) failed: Vec<String>,
    pub(super) remaining: InstallState,
}

/// Undo one file: back byte for byte when nobody changed it since install; else take
/// out only what install added and keep the rest.
pub(super) fn undo_file(
    root: &Path,
    record: &FileRecord,
    legacy_args: &[String],
) -> Result<String> {
    let full = under(root, &record.path);
    let current = match fs::read(&full) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    let installed = record
        .installed
        .as_deref()
        .map(|p| fs::read(p).with_context(|| format!("cannot read {p}")))
        .transpose()?;
    let original = record
        .backup
        .as_deref()
        .map(|p| fs::read(p).with_context(|| format!("cannot read the backup {p}")))
        .transpose()?;
    let as_was = match &original {
        Some(_) => format!("restored {} as it was before install", record.path),
        None => format!("removed {}", record.path),
    };
    let unchanged = match (&installed, &record.installed) {
        (Some(i), _) => current.as_ref() == Some(i),
        // Installed copy absent: install left no file (or an older version wrote the record).
        (None, Some(_)) => false,
        (None, None) => current.is_none() || record.backup.is_none() || legacy_args.is_empty(),
    };
    let (target, note) = if unchanged || current.is_none() {
        (original, as_was)
    } else {
        let current_text =
            String::from_utf8_lossy(current.as_deref().unwrap_or_default()).into_owned();
        let kept = match Kind::of(&record.path) {
            Some(kind) => {
                let (add, remove) = if record.installed.is_some() {
                    (record.removed_words.clone(), record.added_words.clone())
                } else {
                    (Vec::new(), legacy_args.to_vec())
                };
                cmdline::edit(kind, &current_text, &add, &remove).unwrap_or(current_text)
            }
            None => {
                // Lines install added (in its copy, not in the original) go; the rest stays.
                let original_text =
                    String::from_utf8_lossy(original.as_deref().unwrap_or_default()).into_owned();
                let installed_text =
                    String::from_utf8_lossy(installed.as_deref().unwrap_or_default()).into_owned();
                let mut ours: Vec<&str> = installed_text
                    .lines()
                    .filter(|l| !original_text.lines().any(|o| o == *l))
                    .collect();
                let mut out = String::new();
                for line in current_text.split_inclusive('\n') {
                    let body = line.trim_end_matches('\n');
                    if let Some(i) = ours.iter().position(|o| *o == body) {
                        ours.remove(i);
                        continue;
                    }
                    out.push_str(line);
                }
                out
            }
        };
        if original.is_none() && kept.trim().is_empty() {
            (
                None,
                format!("removed {} (only what install wrote was left)", record.path),
            )
        } else {
            (
                Some(kept.into_bytes()),
                format!(
                    "{} was changed since install: took out only what install added, kept the rest",
                    record.path
                ),
            )
        }
    };
    match target {
        Some(content) => {
            let mode = if unchanged {
                record.mode.unwrap_or(0o644)
            } else {
                mode_of(&full).or(record.mode).unwrap_or(0o644)
            };
            if current.as_deref() != Some(content.as_slice()) || mode_of(&full) != Some(mode) {
                write_atomic(&full, &content, mode)?;
            }
        }
        None => {
            if current.is_some() {
                fs::remove_file(&full)
                    .with_context(|| format!("cannot remove {}", full.display()))?;
            }
        }
    }
    Ok(note)
}

/// Undo what `state` records: files back (exactly, when nobody changed them since),
/// kernel arguments out, hook link removed, diversion undone. Every step is tried; a
/// failed one stays in `remaining`, with its backups.
pub(super) fn undo_state(state: &InstallState, host: &Run<'_>, quiet: bool) -> UndoReport {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut remaining = InstallState {
        exact: state.exact,
        ..InstallState::default()
    };
    if state.metrics_timer {
        let args = ["disable", "--now", METRICS_TIMER];
        match host.runner.run("systemctl", &args) {
            Ok(Ran::Done(_)) => done.push(format!("ran {}", command_line("systemctl", &args))),
            Ok(Ran::Skipped(why)) => done.push(format!("systemctl: {why}")),
            Err(e) => {
                failed.push(format!("{e:#}"));
                remaining.metrics_timer = true;
            }
        }
    }
    if state.diverted {
        match Diversion::under(host.root).undivert(host.runner) {
            Ok(outcome) => done.push(format!("undivert: {}", outcome.steps.join("; "))),
            Err(e) => {
                failed.push(format!("undivert: {e:#}"));
                remaining.diverted = true;
            }
        }
    }
    if let Some(path) = &state.hook {
        let full = under(host.root, path);
        if fs::read_link(&full).is_ok_and(|t| t == Path::new(HOOK_SOURCE)) {
            match fs::remove_file(&full) {
                Ok(()) => done.push(format!("removed {path}")),
                Err(e) => {
                    failed.push(format!("remove {}: {e}", full.display()));
                    remaining.hook = Some(path.clone());
                }
            }
        }
    }
    // An older version's record: the boot entries were not recorded one by one, so
    // grubby takes the arguments out (it also strips ones that were there before).
    let legacy_args: Vec<String> = if state.exact {
        Vec::new()
    } else {
        state.kernel_args.clone()
    };
    if !legacy_args.is_empty() {
        let remove = format!("--remove-args={}", legacy_args.join(" "));
        let all = ["--update-kernel=ALL", remove.as_str()];
        match host.runner.run("grubby", &all) {
            Ok(Ran::Done(_)) => done.push(format!("ran {}", command_line("grubby", &all))),
            Ok(Ran::Skipped(why)) => done.push(format!("grubby: {why}")),
            Err(e) => {
                failed.push(format!("{e:#}"));
                remaining.kernel_args = legacy_args.clone();
            }
        }
    }
    for record in state.files.iter().rev() {
        match undo_file(host.root, record, &legacy_args) {
            Ok(note) => {
                done.push(note);
                for copy in record.backup.iter().chain(&record.installed) {
                    let _ = fs::remove_file(copy);
                }
            }
            Err(e) => {
                failed.push(format!("{}: {e:#}", record.path));
                remaining.files.insert(0, record.clone());
            }
        }
    }
    // New kernels installed since took the arguments from /etc/kernel/cmdline or
    // kernelopts: their entries lose the ones install added there.
    if state.exact && !state.kernel_args.is_empty() {
        let recorded: BTreeSet<&str> = state.files.iter().map(|r| r.path.as_str()).collect();
        for path in cmdline::files(host.root) {
            if Kind::of(&path) != Some(Kind::BlsEntry) || recorded.contains(path.as_str()) {
                continue;
            }
            let full = under(host.root, &path);
            let Ok(text) = fs::read_to_string(&full) else {
                continue;
            };
            if let Some(new) = cmdline::edit(Kind::BlsEntry, &text, &[], &state.kernel_args) {
                match write_atomic(&full, new.as_bytes(), mode_of(&full).unwrap_or(0o644)) {
                    Ok(()) => done.push(format!(
                        "{path} (a boot entry added since install): took out {}",
                        state.kernel_args.join(" ")
                    )),
                    Err(e) => failed.push(format!("{path}: {e}")),
                }
            }
        }
    }
    if failed.is_empty() {
        if !quiet {
            let _ = fs::remove_file(state_path(host.root));
            let _ = fs::remove_file(under(host.root, &format!("{STATE_DIR}/lock")));
        }
        for kind in ["installed", "backup"] {
            remove_empty_dirs(&under(host.root, &format!("{STATE_DIR}/{kind}")));
        }
        for dir in state.created_dirs.iter().rev() {
            // Only if empty: whatever someone else put there stays.
            if fs::remove_dir(under(host.root, dir)).is_ok() {
                done.push(format!("removed {dir}/"));
            }
        }
    } else {
        remaining.created_dirs = state.created_dirs.clone();
    }
    // After a failed install (quiet) dracut never ran to its end: dracut is its last
    // step, so the initramfs is the one from before.
    if !quiet
        && state
            .files
            .iter()
            .any(|r| r.path == DRACUT || r.path == MODPROBE)
    {
        match host.runner.run("dracut", &["-f"]) {
            Ok(Ran::Done(_)) => done.push("ran dracut -f".into()),
            Ok(Ran::Skipped(why)) => done.push(format!("dracut: {why}")),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    UndoReport {
        done,
        failed,
        remaining,
    }
}

/// Remove `dir` and the empty directories below it, leaving any that hold files.
pub(super) fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// What uninstall would do, or did.
pub fn uninstall(host: &Run<'_>) -> Result<Vec<String>> {
    let state = read_state(host.root)?;
    if state.files.is_empty()
        && state.hook.is_none()
        && !state.diverted
        && !state.metrics_timer
        && state.kernel_args.is_empty()
    {
        return Ok(vec![
            "nothing to undo: gpu-passthrough install has not changed this host".into(),
        ]);
    }
    if host.runner.dry_run {
        let mut plan = Vec::new();
        if state.metrics_timer {
            plan.push(format!("run: systemctl disable --now {METRICS_TIMER}"));
        }
        if state.diverted {
            plan.push(format!("undivert {}", crate::divert::QEMU));
        }
        if let Some(h) = &state.hook {
            plan.push(format!("remove {h}"));
        }
        if !state.exact && !state.kernel_args.is_empty() {
            plan.push(format!(
                "run: grubby --update-kernel=ALL '--remove-args={}'",
                state.kernel_args.join(" ")
            ));
        }
        for r in state.files.iter().rev() {
            plan.push(match r.backup {
                Some(_) => format!("restore {} as it was before install", r.path),
                None => format!("remove {}", r.path),
            });
        }
        return Ok(plan);
    }
    let report = undo_state(&state, host, false);
    if report.failed.is_empty() {
        return Ok(report.done);
    }
    for step in &report.done {
        println!("{step}");
    }
    write_state(host.root, &report.remaining)?;
    for f in &report.failed {
        eprintln!("gpu-passthrough: undo step failed: {f}");
    }
    bail!(
        "uninstall is incomplete: {} step(s) failed (above). What is left to undo, with its \
         backups, stays recorded in {}: fix the cause and run `gpu-passthrough uninstall` again",
        report.failed.len(),
        state_path(host.root).display()
    )
}
