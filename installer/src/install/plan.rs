//! The plan: every file install would write (with its new content), the kernel
//! arguments, the diversion, the hook, the commands; and how an operator reads it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use similar::TextDiff;

use crate::cmdline::{self, Kind, GRUB_DEFAULT};
use crate::divert::{Diversion, State};
use crate::files::under;
use crate::inventory::{Gpu, Inventory};
use crate::platform::{self, HOOK_PATH, HOOK_SOURCE};
use crate::runner::command_line;

use super::*;

/// One file install wants to have.
#[derive(Debug, Clone)]
pub(super) struct FileChange {
    pub(super) path: &'static str,
    pub(super) old: Option<Vec<u8>>,
    pub(super) new: Vec<u8>,
    pub(super) mode: u32,
}

/// Everything install would do.
#[derive(Debug)]
pub struct Plan {
    pub(super) files: Vec<FileChange>,
    /// Kernel arguments to add with grubby (empty: none missing) to the boot entries,
    /// grubenv and /etc/kernel/cmdline.
    pub(super) kernel_args: Vec<String>,
    /// GRUB_CMDLINE_LINUX with the arguments it lacks: install edits it itself (grubby
    /// would rewrite the whole line, comments and spacing lost).
    pub(super) grub_default: Option<FileChange>,
    /// Every argument install wants on the command line.
    pub(super) all_args: Vec<String>,
    pub(super) hook: Option<(PathBuf, &'static str)>,
    pub(super) divert: bool,
    pub(super) dracut: bool,
    /// Enable gpu-passthrough-metrics.timer (its unit is installed, not enabled yet).
    pub(super) metrics_timer: bool,
    pub(super) notes: Vec<String>,
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

/// The VFIO modules vfio-pci needs early, in load order. `vfio_virqfd` is a module of
/// its own before kernel 6.2 and part of `vfio` from then on.
const VFIO_MODULES: [&str; 4] = ["vfio", "vfio_virqfd", "vfio_iommu_type1", "vfio_pci"];

/// The VFIO modules that every installed kernel (ROOT/lib/modules/KVER) has, as a
/// module (modules.dep) or built in (modules.builtin), as modinfo -k KVER finds them:
/// dracut fails hard on a module it cannot find, for any kernel. Notes say which were
/// left out, and for which kernels. No kernels to read: the three every kernel has.
pub(super) fn vfio_modules(root: &Path) -> (Vec<&'static str>, Vec<String>) {
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

pub fn plan(host: &Run<'_>, inventory: &Inventory, wanted: &[(u16, u16)]) -> Result<Plan> {
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
pub(super) fn file_change(
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

pub(super) fn mode_of(path: &Path) -> Option<u32> {
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
pub(super) fn grubby_args(plan: &Plan) -> Option<Vec<String>> {
    (!plan.kernel_args.is_empty()).then(|| {
        vec![
            "--update-kernel=ALL".into(),
            format!("--args={}", plan.kernel_args.join(" ")),
            "--no-etc-grub-update".into(),
        ]
    })
}

/// The commands after the files: restorecon of a config install wrote, dracut.
pub(super) fn commands(plan: &Plan) -> Vec<(&'static str, Vec<String>)> {
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
