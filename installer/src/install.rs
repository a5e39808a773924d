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

use crate::cmdline::{self, Kind, GRUB_DEFAULT};
use crate::divert::{Diversion, State};
use crate::files::{under, write_atomic};
use crate::inventory::{Gpu, Inventory};
use crate::platform::{self, HOOK_PATH, HOOK_SOURCE};
use crate::runner::{command_line, Ran, Runner};

pub const STATE_DIR: &str = "/var/lib/gpu-passthrough";
/// Before libvirt 6.5 there is only this one hook per driver.
/// The metrics timer's unit, which the RPM installs.
pub const METRICS_TIMER: &str = "gpu-passthrough-metrics.timer";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
pub const MODPROBE: &str = "/etc/modprobe.d/gpu-passthrough.conf";
const MODULES_LOAD: &str = "/etc/modules-load.d/gpu-passthrough.conf";
const DRACUT: &str = "/etc/dracut.conf.d/gpu-passthrough.conf";
const CONFIG: &str = "/etc/gpu-passthrough/config.toml";

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
    /// Files written (by install, or by grubby for it), in order, with what was there
    /// before and what install left.
    pub files: Vec<FileRecord>,
    /// Kernel arguments install added somewhere (grubby and GRUB_CMDLINE_LINUX).
    pub kernel_args: Vec<String>,
    /// Written by a version that records every command-line file per file (boot
    /// entries, grubenv, /etc/kernel/cmdline, /etc/default/grub), so that uninstall
    /// edits exactly those and never runs `grubby --remove-args`, which also strips
    /// arguments that were there before.
    #[serde(default)]
    pub exact: bool,
    /// The hook link install made.
    pub hook: Option<String>,
    /// Whether install diverted qemu-kvm (it was not diverted before).
    pub diverted: bool,
    /// Whether install enabled gpu-passthrough-metrics.timer.
    #[serde(default)]
    pub metrics_timer: bool,
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
    /// A copy of the file as install left it, under STATE_DIR/installed: a file that
    /// still holds exactly that comes back byte for byte; one edited since keeps the
    /// edits and loses only what install added.
    #[serde(default)]
    pub installed: Option<String>,
    /// For a kernel command-line file: the words install (or grubby for it) added to
    /// the command line, and the ones that went (grubby replaces `iommu=soft` when
    /// adding `iommu=pt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_words: Vec<String>,
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
    /// Kernel arguments to add with grubby (empty: none missing) to the boot entries,
    /// grubenv and /etc/kernel/cmdline.
    kernel_args: Vec<String>,
    /// GRUB_CMDLINE_LINUX with the arguments it lacks: install edits it itself (grubby
    /// would rewrite the whole line, comments and spacing lost).
    grub_default: Option<FileChange>,
    /// Every argument install wants on the command line.
    all_args: Vec<String>,
    hook: Option<(PathBuf, &'static str)>,
    divert: bool,
    dracut: bool,
    /// Enable gpu-passthrough-metrics.timer (its unit is installed, not enabled yet).
    metrics_timer: bool,
    notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.kernel_args.is_empty()
            && self.grub_default.is_none()
            && self.hook.is_none()
            && !self.divert
            && !self.metrics_timer
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

/// The VFIO modules vfio-pci needs early, in load order. `vfio_virqfd` is a module of
/// its own before kernel 6.2 and part of `vfio` from then on.
const VFIO_MODULES: [&str; 4] = ["vfio", "vfio_virqfd", "vfio_iommu_type1", "vfio_pci"];

/// The VFIO modules that every installed kernel (ROOT/lib/modules/KVER) has, as a
/// module (modules.dep) or built in (modules.builtin), as modinfo -k KVER finds them:
/// dracut fails hard on a module it cannot find, for any kernel. Notes say which were
/// left out, and for which kernels. No kernels to read: the three every kernel has.
fn vfio_modules(root: &Path) -> (Vec<&'static str>, Vec<String>) {
    let dir = under(root, "/lib/modules");
    let mut kernels: Vec<(String, String)> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let kver = e.file_name().to_string_lossy().into_owned();
            let mut known = String::new();
            for index in ["modules.dep", "modules.builtin"] {
                known.push_str(&fs::read_to_string(e.path().join(index)).unwrap_or_default());
            }
            (!known.is_empty()).then_some((kver, known))
        })
        .collect();
    kernels.sort();
    if kernels.is_empty() {
        return (vec!["vfio", "vfio_iommu_type1", "vfio_pci"], Vec::new());
    }
    let has = |index: &str, module: &str| {
        index.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            let name = file.split('.').next().unwrap_or("").replace('-', "_");
            name == module
        })
    };
    let mut modules = Vec::new();
    let mut notes = Vec::new();
    for module in VFIO_MODULES {
        let lacking: Vec<&str> = kernels
            .iter()
            .filter(|(_, index)| !has(index, module))
            .map(|(kver, _)| kver.as_str())
            .collect();
        if lacking.is_empty() {
            modules.push(module);
        } else {
            notes.push(format!(
                "{module} left out of dracut and modules-load.d: kernel {} has no such module{}",
                lacking.join(", "),
                if module == "vfio_virqfd" {
                    " (it is part of vfio from kernel 6.2 on)"
                } else {
                    ""
                }
            ));
        }
    }
    (modules, notes)
}

/// Whether install linked the hook, which the daemon reads only when it starts.
pub fn links_hook(plan: &Plan) -> bool {
    plan.hook.is_some()
}

/// What the operator has to do after an install that changed the plan's things.
/// `restart`: the step that makes the daemon read the hook, when one is still needed.
pub fn next_steps(plan: &Plan, restart: Option<String>) -> String {
    let mut steps: Vec<String> = Vec::new();
    if !plan.kernel_args.is_empty() || plan.grub_default.is_some() || plan.dracut {
        steps.push("reboot, for the kernel arguments and the early vfio-pci binding".into());
    }
    steps.extend(restart);
    steps.push("run `gpu-passthrough check`".into());
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
    // A damaged record stops install before anything changes.
    let state = read_state(host.root)?;
    for note in &notes {
        eprintln!("gpu-passthrough: warning: {note}");
    }
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for gpu in gpus {
        for (_, e) in &gpu.functions {
            ids.insert(format!("{}:{}", e.vendor_id, e.device_id));
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();

    let vendor = host_model::procfs::cpu(host.proc_root).vendor;
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
    let (modules, left_out) = vfio_modules(host.root);
    notes.extend(left_out);
    want(
        &mut files,
        MODULES_LOAD,
        format!("{header}{}\n", modules.join("\n")),
        0o644,
    )?;
    want(
        &mut files,
        DRACUT,
        format!(
            "{header}add_drivers+=\" {} \"\n\
             install_items+=\" {MODPROBE} \"\n",
            modules.join(" ")
        ),
        0o644,
    )?;
    let dracut = !files.is_empty();

    // The kernel arguments each command-line file lacks. grubby adds them to the boot
    // entries, grubenv and /etc/kernel/cmdline; install itself to GRUB_CMDLINE_LINUX
    // (for kernels installed later), word by word.
    let all_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut missing: BTreeSet<&str> = BTreeSet::new();
    let mut grub_default = None;
    let mut boot_entries_seen = false;
    for path in cmdline::files(host.root) {
        let kind = Kind::of(&path).expect("cmdline::files lists command-line files");
        let full = under(host.root, &path);
        let text = match fs::read_to_string(&full) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
        };
        if kind == Kind::GrubDefault {
            if let Some(new) = cmdline::edit(kind, &text, &all_args, &[]) {
                grub_default = Some(FileChange {
                    path: GRUB_DEFAULT,
                    old: Some(text.into_bytes()),
                    new: new.into_bytes(),
                    mode: mode_of(&full).unwrap_or(0o644),
                });
            }
            continue;
        }
        if !cmdline::has_cmdline(kind, &text) {
            continue;
        }
        boot_entries_seen |= kind != Kind::KernelCmdline;
        let words = cmdline::words(kind, &text);
        missing.extend(
            all_args
                .iter()
                .map(String::as_str)
                .filter(|a| !words.iter().any(|w| w == a)),
        );
    }
    if !under(host.root, GRUB_DEFAULT).exists() {
        notes.push(format!(
            "{} does not exist: only grubby sets the kernel arguments",
            under(host.root, GRUB_DEFAULT).display()
        ));
    }
    if !boot_entries_seen {
        // No boot entries to read (another boot loader, a bare root): what the running
        // kernel booted with, and what an earlier install gave grubby, say what is missing.
        let running = host_model::procfs::kernel_cmdline(host.proc_root).unwrap_or_default();
        missing.extend(all_args.iter().map(String::as_str).filter(|a| {
            !running.iter().any(|w| w == a) && !state.kernel_args.iter().any(|k| k == a)
        }));
    }
    let kernel_args: Vec<String> = all_args
        .iter()
        .filter(|a| missing.contains(a.as_str()))
        .cloned()
        .collect();

    // The config, if the package's is gone. Its label comes from the package's SELinux
    // module (the RPM's to load and remove, not install's): restorecon applies it.
    if fs::symlink_metadata(under(host.root, CONFIG)).is_err() {
        want(
            &mut files,
            CONFIG,
            host_model::config::DEFAULT_FILE.to_owned(),
            0o644,
        )?;
    }

    if !under(host.root, HOOK_SOURCE).is_file() {
        bail!(
            "the hook {} is missing: reinstall the gpu-passthrough package",
            under(host.root, HOOK_SOURCE).display()
        );
    }
    // The hook: qemu.d on libvirt >= 6.5, else the single qemu hook if it is free.
    let hook_path = platform::hook_path(platform::libvirt_version(host.runner));
    let qemu_d = hook_path == HOOK_PATH;
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

    // The metrics timer, when the package installed its unit and install has not
    // enabled it yet.
    let metrics_timer =
        under(host.root, &format!("{UNIT_DIR}/{METRICS_TIMER}")).is_file() && !state.metrics_timer;
    if !under(host.root, &format!("{UNIT_DIR}/{METRICS_TIMER}")).is_file() {
        notes.push(format!(
            "{UNIT_DIR}/{METRICS_TIMER} is not installed: no metrics for node_exporter \
             (the RPM ships it)"
        ));
    }

    let divert = match Diversion::under(host.root).state()? {
        State::Diverted { current } => !current,
        _ => true,
    };
    Ok(Plan {
        files,
        kernel_args,
        grub_default,
        all_args,
        hook,
        divert,
        dracut,
        metrics_timer,
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

fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// The plan as an operator reads it: diffs and command lines.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for f in plan.files.iter().chain(&plan.grub_default) {
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
    if let Some(args) = grubby_args(plan) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        out.push_str(&format!("run: {}\n", command_line("grubby", &args)));
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

/// grubby's arguments, when some boot entry lacks a kernel argument. It leaves
/// /etc/default/grub alone: install edits GRUB_CMDLINE_LINUX itself, word by word
/// (grubby would rewrite the whole line). `--no-etc-grub-update` comes last: EL's
/// grubby-bls shifts twice for it and so would swallow an option after it.
fn grubby_args(plan: &Plan) -> Option<Vec<String>> {
    (!plan.kernel_args.is_empty()).then(|| {
        vec![
            "--update-kernel=ALL".into(),
            format!("--args={}", plan.kernel_args.join(" ")),
            "--no-etc-grub-update".into(),
        ]
    })
}

/// The commands after the files: restorecon of a config install wrote, dracut.
fn commands(plan: &Plan) -> Vec<(&'static str, Vec<String>)> {
    let mut c = Vec::new();
    if plan.files.iter().any(|f| f.path == CONFIG) {
        c.push((
            "restorecon",
            vec!["-R".into(), "/etc/gpu-passthrough".into()],
        ));
    }
    if plan.dracut {
        c.push(("dracut", vec!["-f".into()]));
    }
    if plan.metrics_timer {
        c.push((
            "systemctl",
            vec!["enable".into(), "--now".into(), METRICS_TIMER.into()],
        ));
    }
    c
}

/// Apply the plan; on failure undo what was done, then report the failure.
pub fn apply(plan: &Plan, host: &Host<'_>) -> Result<Vec<String>> {
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
pub fn remove_lock_dirs(host: &Host<'_>) {
    if host.lock_dirs_created.is_empty() {
        return;
    }
    let _ = fs::remove_file(under(host.root, &format!("{STATE_DIR}/lock")));
    for dir in host.lock_dirs_created.iter().rev() {
        let _ = fs::remove_dir(under(host.root, dir));
    }
}

/// Where the copy of `path` lives under STATE_DIR/`kind` (`backup`, `installed`).
fn state_copy(root: &Path, kind: &str, path: &str) -> PathBuf {
    under(root, &format!("{STATE_DIR}/{kind}")).join(path.trim_start_matches('/'))
}

/// Record `path` (a host path) before install changes it: a backup of what is there,
/// unless an earlier install recorded it already (the first backup is the host as it
/// was before any install).
fn record_before(host: &Host<'_>, state: &mut InstallState, path: &str) -> Result<()> {
    if state.files.iter().any(|r| r.path == path) {
        return Ok(());
    }
    let full = under(host.root, path);
    let backup = match fs::read(&full) {
        Ok(old) => {
            let b = state_copy(host.root, "backup", path);
            create_dirs(host.root, b.parent().expect("backup has a parent"), state)?;
            write_atomic(&b, &old, 0o600)?;
            Some(b.to_string_lossy().into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    state.files.push(FileRecord {
        path: path.to_owned(),
        backup,
        mode: mode_of(&full),
        installed: None,
        added_words: Vec::new(),
        removed_words: Vec::new(),
    });
    write_state(host.root, state)
}

/// Record what install left at `path`: a copy, and for a command-line file the words
/// it added and took away. A file install left as it was is forgotten again.
fn record_after(host: &Host<'_>, state: &mut InstallState, path: &str) -> Result<()> {
    let Some(index) = state.files.iter().position(|r| r.path == path) else {
        return Ok(());
    };
    let full = under(host.root, path);
    let now = match fs::read(&full) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    let record = &state.files[index];
    let before = record
        .backup
        .as_ref()
        .map(fs::read)
        .transpose()
        .with_context(|| format!("cannot read the backup of {path}"))?;
    if record.installed.is_none() && now == before {
        // Untouched (grubby had nothing to change here): nothing to undo.
        if let Some(b) = &record.backup {
            let _ = fs::remove_file(b);
        }
        state.files.remove(index);
        return write_state(host.root, state);
    }
    let installed = match &now {
        Some(content) => {
            let copy = state_copy(host.root, "installed", path);
            create_dirs(host.root, copy.parent().expect("copy has a parent"), state)?;
            write_atomic(&copy, content, 0o600)?;
            Some(copy.to_string_lossy().into_owned())
        }
        None => None,
    };
    let record = &mut state.files[index];
    record.installed = installed;
    if let Some(kind) = Kind::of(path) {
        let text = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .map(|b| cmdline::words(kind, &String::from_utf8_lossy(b)))
                .unwrap_or_default()
        };
        let (old, new) = (text(&before), text(&now));
        record.added_words = new.iter().filter(|w| !old.contains(w)).cloned().collect();
        record.removed_words = old.iter().filter(|w| !new.contains(w)).cloned().collect();
    }
    write_state(host.root, state)
}

fn apply_steps(
    plan: &Plan,
    host: &Host<'_>,
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

/// What an undo did, what failed, and what is left to undo.
struct UndoReport {
    done: Vec<String>,
    failed: Vec<String>,
    remaining: InstallState,
}

/// Undo one file: back byte for byte when nobody changed it since install; else take
/// out only what install added and keep the rest.
fn undo_file(root: &Path, record: &FileRecord, legacy_args: &[String]) -> Result<String> {
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
fn undo_state(state: &InstallState, host: &Host<'_>, quiet: bool) -> UndoReport {
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
fn remove_empty_dirs(dir: &Path) {
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
pub fn uninstall(host: &Host<'_>) -> Result<Vec<String>> {
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
