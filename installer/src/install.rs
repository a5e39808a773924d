//! `install` and `uninstall`: set a hypervisor up for GPU passthrough, and give it back
//! exactly as it was.
//!
//! install works from a plan: every file it would write (with its new content), the
//! kernel arguments, the diversion, the hook, the commands. `--dry-run` prints the plan
//! as unified diffs and command lines. Applied, each step records how to undo it in
//! /var/lib/gpu-passthrough/state.json (with a backup of every file it changes), and a
//! failing step undoes the steps before it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use similar::TextDiff;

use crate::check::HOOK_PATH;
use crate::divert::{Diversion, State};
use crate::files::{under, write_atomic};
use crate::inventory::{Gpu, Inventory};
use crate::runner::{command_line, Ran, Runner};

pub const STATE_DIR: &str = "/var/lib/gpu-passthrough";
pub const HOOK_SOURCE: &str = "/usr/libexec/gpu-passthrough/gpu-passthrough-hook";
/// Before libvirt 6.5 there is only this one hook per driver.
pub const LEGACY_HOOK_PATH: &str = "/etc/libvirt/hooks/qemu";
pub const GRUB_DEFAULT: &str = "/etc/default/grub";
const MODPROBE: &str = "/etc/modprobe.d/gpu-passthrough.conf";
const MODULES_LOAD: &str = "/etc/modules-load.d/gpu-passthrough.conf";
const DRACUT: &str = "/etc/dracut.conf.d/gpu-passthrough.conf";
const CONFIG: &str = "/etc/gpu-passthrough/config.toml";
const SELINUX_MODULE: &str = "/var/lib/gpu-passthrough/gpu-passthrough.cil";
/// The file-context module that labels /etc/gpu-passthrough virt_etc_t, so that the
/// wrapper (svirt_t) can read its config. The RPM ships the same file.
const SELINUX_CIL: &str = include_str!("../../rpm/gpu-passthrough.cil");
/// The marker of lines we manage in files we do not own.
const MARK: &str = "# gpu-passthrough:";

/// Host drivers that must not get the GPUs' functions before vfio-pci.
const HOST_DRIVERS: &[&str] = &[
    "nouveau",
    "nvidia",
    "nvidiafb",
    "snd_hda_intel",
    "xhci_pci",
    "i2c_nvidia_gpu",
    "ucsi_ccg",
];

/// What install did, so that uninstall can undo it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallState {
    /// Files written, in order, with what was there before.
    pub files: Vec<FileRecord>,
    /// Kernel arguments install added (grubby and GRUB_CMDLINE_LINUX).
    pub kernel_args: Vec<String>,
    /// The hook link install made.
    pub hook: Option<String>,
    /// Whether install diverted qemu-kvm (it was not diverted before).
    pub diverted: bool,
    /// Directories install created (host paths), parents first.
    #[serde(default)]
    pub created_dirs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path on the host (without --root).
    pub path: String,
    /// The backup of the file as it was, under STATE_DIR/backup; `None`: it did not exist.
    pub backup: Option<String>,
    pub mode: Option<u32>,
}

fn state_path(root: &Path) -> PathBuf {
    under(root, &format!("{STATE_DIR}/state.json"))
}

fn read_state(root: &Path) -> Result<InstallState> {
    let path = state_path(root);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; restore it or remove it (uninstall then cannot undo)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstallState::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_state(root: &Path, state: &InstallState) -> Result<()> {
    let path = state_path(root);
    fs::create_dir_all(path.parent().expect("state.json has a parent"))?;
    write_atomic(&path, &serde_json::to_vec_pretty(state)?, 0o644)?;
    Ok(())
}

/// One file install wants to have.
#[derive(Debug, Clone)]
struct FileChange {
    path: &'static str,
    old: Option<Vec<u8>>,
    new: Vec<u8>,
    mode: u32,
}

/// Everything install would do.
#[derive(Debug)]
pub struct Plan {
    files: Vec<FileChange>,
    /// Kernel arguments to add with grubby (empty: none missing).
    kernel_args: Vec<String>,
    hook: Option<(PathBuf, &'static str)>,
    divert: bool,
    dracut: bool,
    notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.kernel_args.is_empty() && self.hook.is_none() && !self.divert
    }
}

/// Inputs of the plan.
pub struct Host<'a> {
    pub root: &'a Path,
    pub proc_root: &'a Path,
    pub runner: &'a Runner,
    /// The directories this run created for its lock (host paths, parents first).
    pub lock_dirs_created: Vec<String>,
}

/// What the operator has to do after an install that changed the plan's things.
pub fn next_steps(plan: &Plan) -> String {
    let mut steps = Vec::new();
    if !plan.kernel_args.is_empty() || plan.dracut {
        steps.push("reboot, for the kernel arguments and the early vfio-pci binding");
    }
    if plan.hook.is_some() {
        steps.push("restart libvirtd (systemctl restart libvirtd), so that it sees the hook");
    }
    steps.push("run `gpu-passthrough check`");
    format!("done. Next: {}.", steps.join("; then "))
}

/// The host paths of `dir` and its ancestors that do not exist under `root`, parents
/// first.
pub fn missing_dirs(root: &Path, dir: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut d = Path::new(dir);
    while !under(root, &d.to_string_lossy()).exists() {
        missing.push(d.to_string_lossy().into_owned());
        match d.parent() {
            Some(p) if p != Path::new("/") => d = p,
            _ => break,
        }
    }
    missing.reverse();
    missing
}

/// Create `dir` and its missing parents, recording each one created.
fn create_dirs(root: &Path, dir: &Path, state: &mut InstallState) -> Result<()> {
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

/// The GPUs to set up: the usable ones of the selection. A GPU whose IOMMU group
/// holds a device the host needs is left out with a note, or stops install when the
/// operator named its model; and a host function that `vfio-pci ids=` would take with
/// them (an unusable GPU of the same model, a card not set up) stops it too.
pub fn choose_gpus<'a>(
    inventory: &'a Inventory,
    wanted: &[(u16, u16)],
    notes: &mut Vec<String>,
) -> Result<Vec<&'a Gpu>> {
    let selection = inventory.select(wanted);
    for (gpu, why) in &selection.left_out {
        if wanted.contains(&gpu.ids()) {
            bail!(
                "{why}. Not setting it up, as --gpu {} asks",
                gpu.display().ids()
            );
        }
        notes.push(format!("left out: {why}"));
    }
    let gpus = selection.usable;
    if gpus.is_empty() {
        if selection.left_out.is_empty() {
            bail!(
                "no GPU to set up: no NVIDIA display function on this host (or none matching \
                 --gpu); `gpu-passthrough scan` lists what there is"
            );
        }
        bail!("no GPU to set up: every one was left out (see above)");
    }
    let caught = inventory.caught_by_ids(&gpus);
    if !caught.is_empty() {
        let names: Vec<String> = caught
            .iter()
            .map(|f| {
                format!(
                    "{} ({}, driver {})",
                    f.address,
                    f.ids(),
                    f.driver.as_deref().unwrap_or("none")
                )
            })
            .collect();
        bail!(
            "`options vfio-pci ids=` binds by vendor:device on the whole host, so it would also \
             take {} at the next boot, which is not set up for passthrough. Nothing changed. \
             Fix: make that device usable too (see `gpu-passthrough scan`) and include its \
             model with --gpu, or move it; then run install again",
            names.join(" and ")
        );
    }
    Ok(gpus)
}

pub fn plan(host: &Host<'_>, inventory: &Inventory, wanted: &[(u16, u16)]) -> Result<Plan> {
    let mut notes = Vec::new();
    let gpus = choose_gpus(inventory, wanted, &mut notes)?;
    for note in &notes {
        eprintln!("gpu-passthrough: warning: {note}");
    }
    let state = read_state(host.root)?;
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for gpu in gpus {
        for (_, e) in &gpu.functions {
            ids.insert(format!("{}:{}", e.vendor_id, e.device_id));
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();

    let (vendor, _) = crate::check::cpu(host.proc_root);
    let mut args = Vec::new();
    match vendor.as_deref() {
        Some("GenuineIntel") => args.push("intel_iommu=on"),
        Some("AuthenticAMD") | Some("HygonGenuine") => {}
        other => notes.push(format!(
            "CPU vendor {} unknown: not adding intel_iommu=on",
            other.unwrap_or("(unreadable)")
        )),
    }
    args.extend(["iommu=pt", "rd.driver.pre=vfio-pci"]);

    let mut files = Vec::new();
    let want = |files: &mut Vec<FileChange>, path: &'static str, new: String, mode: u32| {
        file_change(host.root, path, new, mode).map(|c| files.extend(c))
    };
    let header =
        "# Written by `gpu-passthrough install`; `gpu-passthrough uninstall` removes it.\n";
    let mut modprobe = format!("{header}options vfio-pci ids={}\n", ids.join(","));
    for driver in HOST_DRIVERS {
        modprobe.push_str(&format!("softdep {driver} pre: vfio-pci\n"));
    }
    modprobe.push_str("blacklist nouveau\noptions nouveau modeset=0\n");
    want(&mut files, MODPROBE, modprobe, 0o644)?;
    want(
        &mut files,
        MODULES_LOAD,
        format!("{header}vfio\nvfio_iommu_type1\nvfio_pci\n"),
        0o644,
    )?;
    want(
        &mut files,
        DRACUT,
        format!(
            "{header}add_drivers+=\" vfio vfio_iommu_type1 vfio_pci \"\n\
             install_items+=\" {MODPROBE} \"\n"
        ),
        0o644,
    )?;
    let dracut = !files.is_empty();

    // GRUB_CMDLINE_LINUX, for kernels installed later.
    let grub = under(host.root, GRUB_DEFAULT);
    // An argument the running kernel has and GRUB_CMDLINE_LINUX has was there before
    // us: grubby need not add it, and uninstall must not remove it.
    let running = host_model::procfs::kernel_cmdline(host.proc_root).unwrap_or_default();
    let mut grub_added = Vec::new();
    match fs::read_to_string(&grub) {
        Ok(text) => {
            let (new, added) = add_kernel_args(&text, &args);
            if !added.is_empty() {
                let mode = mode_of(&grub).unwrap_or(0o644);
                want(&mut files, GRUB_DEFAULT, new, mode)?;
            }
            grub_added = added;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => notes.push(format!(
            "{} does not exist: only grubby sets the kernel arguments",
            grub.display()
        )),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", grub.display())),
    }
    let kernel_args: Vec<String> = args
        .iter()
        .map(|a| a.to_string())
        .filter(|a| !state.kernel_args.contains(a))
        .filter(|a| grub_added.contains(a) || !running.contains(a))
        .collect();

    // Outside the RPM the config is not labelled yet: a file-context module does it.
    if fs::symlink_metadata(under(host.root, CONFIG)).is_err() {
        want(
            &mut files,
            CONFIG,
            host_model::config::DEFAULT_FILE.to_owned(),
            0o644,
        )?;
    }
    want(&mut files, SELINUX_MODULE, SELINUX_CIL.to_owned(), 0o644)?;

    if !under(host.root, HOOK_SOURCE).is_file() {
        bail!(
            "the hook {} is missing: reinstall the gpu-passthrough package",
            under(host.root, HOOK_SOURCE).display()
        );
    }
    // The hook: qemu.d on libvirt >= 6.5, else the single qemu hook if it is free.
    let qemu_d = matches!(libvirt_version(host.runner), Some(v) if v >= (6, 5))
        || libvirt_version(host.runner).is_none();
    let hook_path = if qemu_d { HOOK_PATH } else { LEGACY_HOOK_PATH };
    let hook_full = under(host.root, hook_path);
    let hook = match fs::read_link(&hook_full) {
        Ok(target) if target == Path::new(HOOK_SOURCE) => None,
        Ok(_) | Err(_) if fs::symlink_metadata(&hook_full).is_ok() => bail!(
            "{} exists and is not ours: libvirt {} runs only that one qemu hook, and it \
             is someone else's. Merge ours into it (call {HOOK_SOURCE} \"$@\" from it) \
             or update libvirt to 6.5 or later, which reads hooks/qemu.d",
            hook_full.display(),
            if qemu_d { ">= 6.5" } else { "< 6.5" }
        ),
        _ => Some((hook_full, hook_path)),
    };

    let divert = match Diversion::under(host.root).state()? {
        State::Diverted { current } => !current,
        _ => true,
    };
    Ok(Plan {
        files,
        kernel_args,
        hook,
        divert,
        dracut,
        notes,
    })
}

/// The change to make `path` hold `new`, if it does not already.
fn file_change(
    root: &Path,
    path: &'static str,
    new: String,
    mode: u32,
) -> Result<Option<FileChange>> {
    let full = under(root, path);
    let old = match fs::read(&full) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    Ok(
        (old.as_deref() != Some(new.as_bytes())).then(|| FileChange {
            path,
            old,
            new: new.into_bytes(),
            mode,
        }),
    )
}

fn libvirt_version(runner: &Runner) -> Option<(u32, u32)> {
    match runner.query("libvirtd", &["--version"]) {
        Ok(Ran::Done(out)) => crate::check::libvirt_version(&out),
        _ => None,
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Add `args` to GRUB_CMDLINE_LINUX (whole words, only the missing ones), with a marker
/// line above naming what was added. Returns the new text and the added words.
pub fn add_kernel_args(text: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut out = Vec::new();
    let mut added = Vec::new();
    let mut found = false;
    for line in text.lines() {
        if line.starts_with(MARK) {
            continue; // rewritten below with the full list
        }
        if let Some(value) = line.strip_prefix("GRUB_CMDLINE_LINUX=").filter(|_| !found) {
            found = true;
            let (quote, inner) = unquote(value);
            let mut words: Vec<String> = inner.split_whitespace().map(str::to_owned).collect();
            for a in args {
                if !words.iter().any(|w| w == a) {
                    words.push(a.to_string());
                    added.push(a.to_string());
                }
            }
            let ours: Vec<&str> = words
                .iter()
                .map(String::as_str)
                .filter(|w| args.contains(w))
                .collect();
            out.push(format!(
                "{MARK} manages {} in the next line",
                ours.join(" ")
            ));
            out.push(format!(
                "GRUB_CMDLINE_LINUX={quote}{}{quote}",
                words.join(" ")
            ));
            continue;
        }
        out.push(line.to_owned());
    }
    if !found {
        added = args.iter().map(|a| a.to_string()).collect();
        out.push(format!(
            "{MARK} manages {} in the next line",
            args.join(" ")
        ));
        out.push(format!("GRUB_CMDLINE_LINUX=\"{}\"", args.join(" ")));
    }
    let mut new = out.join("\n");
    new.push('\n');
    if added.is_empty() {
        (text.to_owned(), added)
    } else {
        (new, added)
    }
}

/// Remove `args` and our marker line from GRUB_CMDLINE_LINUX.
pub fn remove_kernel_args(text: &str, args: &[String]) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with(MARK) {
            continue;
        }
        if let Some(value) = line.strip_prefix("GRUB_CMDLINE_LINUX=") {
            let (quote, inner) = unquote(value);
            let words: Vec<&str> = inner
                .split_whitespace()
                .filter(|w| !args.iter().any(|a| a == w))
                .collect();
            out.push(format!(
                "GRUB_CMDLINE_LINUX={quote}{}{quote}",
                words.join(" ")
            ));
            continue;
        }
        out.push(line.to_owned());
    }
    let mut new = out.join("\n");
    new.push('\n');
    new
}

fn unquote(value: &str) -> (&'static str, &str) {
    let v = value.trim();
    if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        ("\"", inner)
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        ("'", inner)
    } else {
        ("\"", v)
    }
}

/// The plan as an operator reads it: diffs and command lines.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for f in &plan.files {
        let old = f
            .old
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let new = String::from_utf8_lossy(&f.new);
        let old_name = if f.old.is_some() {
            format!("a{}", f.path)
        } else {
            "/dev/null".into()
        };
        out.push_str(
            &TextDiff::from_lines(old.as_ref(), new.as_ref())
                .unified_diff()
                .header(&old_name, &format!("b{}", f.path))
                .to_string(),
        );
    }
    if let Some((_, path)) = &plan.hook {
        out.push_str(&format!("link {path} -> {HOOK_SOURCE}\n"));
    }
    if plan.divert {
        out.push_str(&format!(
            "divert {} to the wrapper (the real qemu becomes {})\n",
            crate::divert::QEMU,
            crate::divert::ORIG
        ));
    }
    for (program, args) in commands(plan) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        out.push_str(&format!("run: {}\n", command_line(program, &args)));
    }
    for n in &plan.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn commands(plan: &Plan) -> Vec<(&'static str, Vec<String>)> {
    let mut c = Vec::new();
    if !plan.kernel_args.is_empty() {
        c.push((
            "grubby",
            vec![
                "--update-kernel=ALL".into(),
                format!("--args={}", plan.kernel_args.join(" ")),
            ],
        ));
    }
    if plan.files.iter().any(|f| f.path == SELINUX_MODULE) {
        c.push(("semodule", vec!["-i".into(), SELINUX_MODULE.into()]));
        c.push((
            "restorecon",
            vec!["-R".into(), "/etc/gpu-passthrough".into()],
        ));
    }
    if plan.dracut {
        c.push(("dracut", vec!["-f".into()]));
    }
    c
}

/// Apply the plan; on failure undo what was done, then report the failure.
pub fn apply(plan: &Plan, host: &Host<'_>) -> Result<Vec<String>> {
    let had_state_file = state_path(host.root).exists();
    let original = read_state(host.root)?;
    let mut state = original.clone();
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
            hook: state.hook.clone().filter(|_| original.hook.is_none()),
            diverted: state.diverted && !original.diverted,
            created_dirs: added(&state.created_dirs, &original.created_dirs),
        };
        if let Err(undo_err) = undo_state(&undo, host, true) {
            eprintln!("gpu-passthrough: undoing failed too: {undo_err:#}");
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
pub fn remove_lock_dirs(host: &Host<'_>) {
    if host.lock_dirs_created.is_empty() {
        return;
    }
    let _ = fs::remove_file(under(host.root, &format!("{STATE_DIR}/lock")));
    for dir in host.lock_dirs_created.iter().rev() {
        let _ = fs::remove_dir(under(host.root, dir));
    }
}

fn apply_steps(
    plan: &Plan,
    host: &Host<'_>,
    state: &mut InstallState,
    done: &mut Vec<String>,
) -> Result<()> {
    let backups = under(host.root, &format!("{STATE_DIR}/backup"));
    for f in &plan.files {
        let full = under(host.root, f.path);
        // Keep the first backup: it is the host as it was before any install.
        if !state.files.iter().any(|r| r.path == f.path) {
            let backup = match &f.old {
                Some(old) => {
                    let b = backups.join(f.path.trim_start_matches('/'));
                    create_dirs(host.root, b.parent().expect("backup has a parent"), state)?;
                    write_atomic(&b, old, 0o600)?;
                    Some(b.to_string_lossy().into_owned())
                }
                None => None,
            };
            state.files.push(FileRecord {
                path: f.path.to_owned(),
                backup,
                mode: mode_of(&full),
            });
            write_state(host.root, state)?;
        }
        create_dirs(
            host.root,
            full.parent().expect("a file has a parent"),
            state,
        )?;
        write_atomic(&full, &f.new, f.mode)?;
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
    for (program, args) in commands(plan) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = host.runner.run(program, &args)?;
        if program == "grubby" {
            for a in &plan.kernel_args {
                if !state.kernel_args.contains(a) {
                    state.kernel_args.push(a.clone());
                }
            }
            write_state(host.root, state)?;
        }
        done.push(match ran {
            Ran::Done(_) => format!("{program}: ran {}", command_line(program, &args)),
            Ran::Skipped(why) => format!("{program}: {why}"),
        });
    }
    Ok(())
}

/// Undo what `state` records: files back (exactly, when nobody changed them since),
/// kernel arguments removed, hook link removed, diversion undone.
fn undo_state(state: &InstallState, host: &Host<'_>, quiet: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    if state.diverted {
        let outcome = Diversion::under(host.root).undivert(host.runner)?;
        done.push(format!("undivert: {}", outcome.steps.join("; ")));
    }
    if let Some(path) = &state.hook {
        let full = under(host.root, path);
        if fs::read_link(&full).is_ok_and(|t| t == Path::new(HOOK_SOURCE)) {
            fs::remove_file(&full).with_context(|| format!("cannot remove {}", full.display()))?;
            done.push(format!("removed {path}"));
        }
    }
    if !state.kernel_args.is_empty() {
        let args: Vec<&str> = vec!["--update-kernel=ALL"];
        let remove = format!("--remove-args={}", state.kernel_args.join(" "));
        let mut all = args.clone();
        all.push(&remove);
        match host.runner.run("grubby", &all)? {
            Ran::Done(_) => done.push(format!("ran {}", command_line("grubby", &all))),
            Ran::Skipped(why) => done.push(format!("grubby: {why}")),
        }
    }
    for record in state.files.iter().rev() {
        let full = under(host.root, &record.path);
        match &record.backup {
            Some(backup) => {
                let old =
                    fs::read(backup).with_context(|| format!("cannot read the backup {backup}"))?;
                let current = fs::read_to_string(&full).unwrap_or_default();
                let restore = if record.path == GRUB_DEFAULT && !quiet {
                    // Keep what the operator changed since; take out only our words.
                    let ours = remove_kernel_args(&current, &state.kernel_args);
                    if ours.as_bytes() == old.as_slice() {
                        old.clone()
                    } else {
                        ours.into_bytes()
                    }
                } else {
                    old
                };
                write_atomic(&full, &restore, record.mode.unwrap_or(0o644))?;
                let _ = fs::remove_file(backup);
                done.push(format!("restored {}", record.path));
            }
            None => {
                if full.exists() {
                    fs::remove_file(&full)
                        .with_context(|| format!("cannot remove {}", full.display()))?;
                    done.push(format!("removed {}", record.path));
                }
            }
        }
    }
    // Backups and state are gone once restored; then the directories install made.
    if !quiet {
        let _ = fs::remove_file(state_path(host.root));
        let _ = fs::remove_file(under(host.root, &format!("{STATE_DIR}/lock")));
    }
    for dir in state.created_dirs.iter().rev() {
        // Only if empty: whatever someone else put there stays.
        if fs::remove_dir(under(host.root, dir)).is_ok() {
            done.push(format!("removed {dir}/"));
        }
    }
    if state
        .files
        .iter()
        .any(|r| r.path == DRACUT || r.path == MODPROBE)
    {
        match host.runner.run("dracut", &["-f"])? {
            Ran::Done(_) => done.push("ran dracut -f".into()),
            Ran::Skipped(why) => done.push(format!("dracut: {why}")),
        }
    }
    Ok(done)
}

/// What uninstall would do, or did.
pub fn uninstall(host: &Host<'_>) -> Result<Vec<String>> {
    let state = read_state(host.root)?;
    if state.files.is_empty()
        && state.hook.is_none()
        && !state.diverted
        && state.kernel_args.is_empty()
    {
        return Ok(vec![
            "nothing to undo: gpu-passthrough install has not changed this host".into(),
        ]);
    }
    if host.runner.dry_run {
        let mut plan = Vec::new();
        if state.diverted {
            plan.push(format!("undivert {}", crate::divert::QEMU));
        }
        if let Some(h) = &state.hook {
            plan.push(format!("remove {h}"));
        }
        if !state.kernel_args.is_empty() {
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
    undo_state(&state, host, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_are_whole_words_and_marked() {
        let text = "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet iommu=pt\"\nGRUB_DISABLE_RECOVERY=\"true\"\n";
        let (new, added) = add_kernel_args(text, &["intel_iommu=on", "iommu=pt"]);
        assert_eq!(added, vec!["intel_iommu=on"]);
        assert!(new.contains("# gpu-passthrough: manages iommu=pt intel_iommu=on in the next line\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet iommu=pt intel_iommu=on\"\n"), "{new}");
        let (again, added) = add_kernel_args(&new, &["intel_iommu=on", "iommu=pt"]);
        assert!(added.is_empty());
        assert_eq!(again, new, "a second run changes nothing");
        assert_eq!(
            remove_kernel_args(&new, &["intel_iommu=on".into()]),
            text,
            "removing what was added gives the file back"
        );
    }

    #[test]
    fn a_missing_cmdline_line_is_added() {
        let (new, added) = add_kernel_args("GRUB_TIMEOUT=5\n", &["iommu=pt"]);
        assert_eq!(added, vec!["iommu=pt"]);
        assert!(new.ends_with("GRUB_CMDLINE_LINUX=\"iommu=pt\"\n"), "{new}");
    }
}
