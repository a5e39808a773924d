//! `check`: is this host ready for GPU passthrough? One line per check.

use std::path::Path;

use host_model::checks::Severity;
use host_model::procfs::{has_param, kernel_cmdline};
use serde::Serialize;

use crate::divert::{Diversion, State};
use crate::files::under;
use crate::inventory::Inventory;
use crate::platform::{
    parse_libvirt_version, HOOK_PATH, HOOK_SOURCE, LEGACY_HOOK_PATH, QEMU_D_SINCE,
};
use crate::runner::{Ran, Runner};

/// One line of `gpu-passthrough check`: a host-readiness check, its severity (the
/// hook's [`Severity`]), what it found and how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    pub check: &'static str,
    #[serde(rename = "status")]
    pub severity: Severity,
    pub message: String,
    pub fix: Option<String>,
}

impl CheckLine {
    fn new(check: &'static str, severity: Severity, message: String, fix: Option<String>) -> Self {
        CheckLine {
            check,
            severity,
            message,
            fix,
        }
    }

    fn pass(check: &'static str, message: impl Into<String>) -> Self {
        Self::new(check, Severity::Pass, message.into(), None)
    }

    fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Severity::Warn, message.into(), Some(fix.into()))
    }

    fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Severity::Fail, message.into(), Some(fix.into()))
    }

    pub fn is_fail(&self) -> bool {
        self.severity == Severity::Fail
    }
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.check, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, ". Fix: {fix}")?;
        }
        Ok(())
    }
}

/// The CPU vendor and virtualisation flag, from `PROC/cpuinfo`.
pub struct Context<'a> {
    pub root: &'a Path,
    pub sysfs: &'a Path,
    pub proc_root: &'a Path,
    pub runner: &'a Runner,
    pub inventory: &'a Inventory,
    pub wanted: &'a [(u16, u16)],
}

pub fn run_checks(cx: &Context<'_>) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let host_model::procfs::Cpu {
        vendor,
        virtualization: virt,
    } = host_model::procfs::cpu(cx.proc_root);
    let intel = vendor.as_deref() == Some("GenuineIntel");
    lines.push(if virt {
        CheckLine::pass(
            "cpu-virtualization",
            format!("{} with vmx/svm", vendor.as_deref().unwrap_or("CPU")),
        )
    } else {
        CheckLine::fail(
            "cpu-virtualization",
            "the CPU flags show neither vmx nor svm",
            "enable VT-x / AMD-V in the firmware setup",
        )
    });

    match kernel_cmdline(cx.proc_root) {
        Ok(cmdline) => {
            if intel && !has_param(&cmdline, "intel_iommu", Some("on")) {
                lines.push(CheckLine::fail(
                    "iommu-cmdline",
                    "Intel CPU and intel_iommu=on is not on the kernel command line",
                    "run `gpu-passthrough install` (grubby --update-kernel=ALL --args=intel_iommu=on), then reboot",
                ));
            } else if !has_param(&cmdline, "iommu", Some("pt")) {
                lines.push(CheckLine::warn(
                    "iommu-cmdline",
                    "iommu=pt is not on the kernel command line (host DMA goes through the IOMMU)",
                    "run `gpu-passthrough install`, then reboot",
                ));
            } else {
                lines.push(CheckLine::pass(
                    "iommu-cmdline",
                    "the kernel command line enables the IOMMU",
                ));
            }
        }
        Err(e) => lines.push(CheckLine::fail(
            "iommu-cmdline",
            format!(
                "cannot read {}: {e}",
                cx.proc_root.join("cmdline").display()
            ),
            "check that /proc is mounted",
        )),
    }

    lines.push(if host_model::pci::iommu_active(cx.sysfs) {
        CheckLine::pass("iommu-active", "the kernel has IOMMU groups")
    } else {
        CheckLine::fail(
            "iommu-active",
            "there are no IOMMU groups: the IOMMU is off",
            "enable VT-d / AMD-Vi in the firmware and boot with the IOMMU on (`gpu-passthrough install`, reboot)",
        )
    });

    lines.push(if cx.sysfs.join("module/vfio_pci").exists() {
        CheckLine::pass("vfio-modules", "vfio-pci is loaded")
    } else {
        CheckLine::fail(
            "vfio-modules",
            "vfio-pci is not loaded",
            "run `gpu-passthrough install` (modules-load.d, dracut), then reboot; or `modprobe vfio-pci` now",
        )
    });

    let selection = cx.inventory.select(cx.wanted);
    for (_, why) in &selection.left_out {
        lines.push(CheckLine::fail(
            "iommu-group",
            why.clone(),
            "move the card or enable ACS, then reboot; `install` leaves this GPU out meanwhile",
        ));
    }
    let gpus = selection.usable;
    if gpus.is_empty() && selection.left_out.is_empty() {
        lines.push(CheckLine::warn(
            "gpus",
            "no NVIDIA GPU (or none of --gpu) on this host",
            "nothing to pass through; `gpu-passthrough scan` lists the display devices",
        ));
    }
    for gpu in &gpus {
        for (f, e) in &gpu.functions {
            let what = format!("{} ({}:{})", e.address, e.vendor_id, e.device_id);
            match f.driver.as_deref() {
                Some("vfio-pci") => lines.push(CheckLine::pass("gpu-driver", format!("{what} is on vfio-pci"))),
                Some("nouveau") => lines.push(CheckLine::fail(
                    "nouveau",
                    format!("{what} is bound to nouveau"),
                    "run `gpu-passthrough install` (blacklists nouveau, binds vfio-pci early), then reboot",
                )),
                other => lines.push(CheckLine::fail(
                    "gpu-driver",
                    format!(
                        "{what} is bound to {}, not vfio-pci",
                        other.map_or("no driver".to_owned(), |d| format!("'{d}'"))
                    ),
                    // --gpu names the card by its GPU function: install binds the card's
                    // every function.
                    format!("run `gpu-passthrough install --gpu {}`, then reboot", gpu.display().ids()),
                )),
            }
        }
    }

    let diversion = Diversion::under(cx.root);
    lines.push(match diversion.state() {
        Ok(State::Diverted { current }) => {
            let executable = diversion.orig.metadata().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o111 != 0
            });
            if !executable {
                CheckLine::fail(
                    "diversion",
                    format!("{} is not executable", diversion.orig.display()),
                    "reinstall qemu (dnf reinstall qemu-kvm-core), then `gpu-passthrough divert`",
                )
            } else if current {
                CheckLine::pass(
                    "diversion",
                    format!("{} is the wrapper", diversion.qemu.display()),
                )
            } else {
                CheckLine::warn(
                    "diversion",
                    format!("{} is an older wrapper", diversion.qemu.display()),
                    "run `gpu-passthrough divert`",
                )
            }
        }
        Ok(State::NotDiverted) => CheckLine::fail(
            "diversion",
            format!(
                "{} is the real qemu: GPU VMs start without the wrapper",
                diversion.qemu.display()
            ),
            "run `gpu-passthrough divert`",
        ),
        Ok(State::Overwritten) => CheckLine::fail(
            "diversion",
            format!(
                "{} is a real qemu again beside {}: a qemu-kvm update replaced the wrapper",
                diversion.qemu.display(),
                diversion.orig.display()
            ),
            "run `gpu-passthrough divert` (the RPM's trigger does it after qemu-kvm updates)",
        ),
        Ok(State::WrapperWithoutOrig) => CheckLine::fail(
            "diversion",
            format!(
                "{} is the wrapper but the real qemu {} is missing: no VM can start",
                diversion.qemu.display(),
                diversion.orig.display()
            ),
            "reinstall qemu (dnf reinstall qemu-kvm-core), then run `gpu-passthrough divert`",
        ),
        Ok(State::QemuMissing { .. }) => CheckLine::fail(
            "diversion",
            format!(
                "{} does not exist: qemu-kvm is not installed",
                diversion.qemu.display()
            ),
            "install qemu-kvm (dnf install qemu-kvm-core), then run `gpu-passthrough divert`",
        ),
        Err(e) => CheckLine::fail(
            "diversion",
            format!("{e:#}"),
            "run `gpu-passthrough divert`",
        ),
    });

    lines.extend(selinux_lines(cx, &diversion));

    let hook = under(cx.root, HOOK_PATH);
    let legacy = under(cx.root, LEGACY_HOOK_PATH);
    let legacy_is_ours = std::fs::read_link(&legacy).is_ok_and(|t| t == Path::new(HOOK_SOURCE));
    lines.push(if exists_in_root(cx.root, &hook) {
        CheckLine::pass("hook", format!("{} is installed", hook.display()))
    } else if legacy_is_ours {
        CheckLine::pass(
            "hook",
            format!("{} is installed (libvirt < 6.5)", legacy.display()),
        )
    } else {
        CheckLine::fail(
            "hook",
            format!("{} is missing", hook.display()),
            "run `gpu-passthrough install`, then restart libvirtd",
        )
    });
    let daemon = crate::platform::qemu_daemon(cx.runner);
    lines.push(match daemon.daemon {
        Some(d) => CheckLine::pass(
            "libvirt-daemon",
            format!(
                "{} runs the qemu driver ({}): it runs the hook, and reads hooks when it starts",
                d.name(),
                daemon.evidence
            ),
        ),
        None => CheckLine::warn(
            "libvirt-daemon",
            format!(
                "cannot tell which daemon runs the qemu driver: {}",
                daemon.evidence
            ),
            "start virtqemud.socket (EL9, EL10) or libvirtd.service",
        ),
    });
    lines.push(match cx.runner.query("libvirtd", &["--version"]) {
        Ok(Ran::Done(out)) => match parse_libvirt_version(&out) {
            Some(v) if v >= QEMU_D_SINCE => CheckLine::pass("libvirt", format!("libvirt {}.{} reads hooks/qemu.d", v.0, v.1)),
            Some(v) => CheckLine::fail(
                "libvirt",
                format!("libvirt {}.{} predates hooks/qemu.d (6.5)", v.0, v.1),
                "install the hook as /etc/libvirt/hooks/qemu (`gpu-passthrough install` does when that file is free), or update libvirt",
            ),
            None => CheckLine::warn("libvirt", format!("cannot read a version from {:?}", out.trim()), "check libvirtd --version"),
        },
        Ok(Ran::Skipped(why)) => CheckLine::warn("libvirt", format!("version unknown: {why}"), "check `libvirtd --version` >= 6.5"),
        Err(e) => CheckLine::warn("libvirt", format!("{e:#}"), "check `libvirtd --version` >= 6.5"),
    });

    let nova_conf = under(cx.root, "/etc/nova/nova.conf");
    if let Ok(text) = std::fs::read_to_string(&nova_conf) {
        let ratio = ini_value(&text, "DEFAULT", "ram_allocation_ratio");
        lines.push(match ratio.as_deref().and_then(|r| r.parse::<f64>().ok()) {
            Some(1.0) => CheckLine::pass("nova", "ram_allocation_ratio = 1.0"),
            _ => CheckLine::fail(
                "nova",
                format!(
                    "{}: ram_allocation_ratio is {}: Nova would overcommit memory that VFIO pins",
                    nova_conf.display(),
                    ratio.as_deref().unwrap_or("unset (default 1.5)")
                ),
                "set ram_allocation_ratio = 1.0 in [DEFAULT] (`gpu-passthrough nova-config` prints it)",
            ),
        });
    }

    let config = host_model::env_path(host_model::config::PATH_ENV)
        .unwrap_or_else(|| under(cx.root, host_model::config::DEFAULT_PATH));
    match host_model::config::load(&config) {
        Ok(loaded) if loaded.warnings.is_empty() => lines.push(CheckLine::pass(
            "config",
            format!("{} is valid", config.display()),
        )),
        Ok(loaded) => lines.extend(loaded.warnings.into_iter().map(|w| {
            CheckLine::warn(
                "config",
                w,
                "remove it, or update gpu-passthrough to the version the file was written for",
            )
        })),
        Err(e) => lines.push(CheckLine::fail("config", e.to_string(), "correct the file")),
    }
    lines
}

/// The name of the package's SELinux module (from rpm/gpu-passthrough.cil).
pub const SELINUX_MODULE: &str = "gpu-passthrough";
/// The type the module gives the state directory and the usage ledger.
const STATE_TYPE: &str = "gpu_passthrough_var_lib_t";
/// The priority the RPM installs it at (Fedora/EL packaging practice for packages).
pub const SELINUX_PRIORITY: u32 = 200;

/// SELinux, when it is on (`SYSFS/fs/selinux/enforce` exists): qemu-kvm and .orig
/// must be `qemu_exec_t` (libvirt's qemu domain enters nothing else), the package's
/// module should be loaded, and `virt_use_usb` on (the wrapper reads sysfs under it).
fn selinux_lines(cx: &Context<'_>, diversion: &Diversion) -> Vec<CheckLine> {
    let selinuxfs = cx.sysfs.join("fs/selinux");
    if !selinuxfs.join("enforce").exists() {
        return vec![CheckLine::pass(
            "selinux",
            format!(
                "SELinux is off ({} is absent): no labels to check",
                selinuxfs.join("enforce").display()
            ),
        )];
    }
    let mut lines = Vec::new();
    for (path, kind) in diversion.labels() {
        lines.push(match kind.as_deref() {
            Some("qemu_exec_t") => CheckLine::pass(
                "selinux-label",
                format!("{} is qemu_exec_t", path.display()),
            ),
            other => CheckLine::fail(
                "selinux-label",
                format!(
                    "{} is {}, not qemu_exec_t: libvirt cannot start qemu through it (svirt_t \
                     enters only qemu_exec_t files), so every VM start fails",
                    path.display(),
                    other.map_or("unlabelled".to_owned(), |t| format!("labelled {t}"))
                ),
                "run `gpu-passthrough divert` (it runs restorecon), or `restorecon -v \
                 /usr/libexec/qemu-kvm /usr/libexec/qemu-kvm.orig`",
            ),
        });
    }
    let policy = std::fs::read_to_string(under(cx.root, "/etc/selinux/config"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("SELINUXTYPE=")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "targeted".to_owned());
    let module = under(
        cx.root,
        &format!("/var/lib/selinux/{policy}/active/modules/{SELINUX_PRIORITY}/{SELINUX_MODULE}"),
    );
    let module_loaded = module.exists();
    lines.push(if module_loaded {
        CheckLine::pass(
            "selinux-module",
            format!(
                "the {SELINUX_MODULE} module is loaded ({policy}, priority {SELINUX_PRIORITY})"
            ),
        )
    } else {
        CheckLine::warn(
            "selinux-module",
            format!(
                "the {SELINUX_MODULE} module is not loaded ({} is absent): the usage ledger \
                 has no type of its own, and EL10's virtqemud cannot append to it",
                module.display()
            ),
            format!(
                "semodule -X {SELINUX_PRIORITY} -i /usr/share/gpu-passthrough/gpu-passthrough.cil \
                 && restorecon -R /var/lib/gpu-passthrough (the package's %post does this)"
            ),
        )
    });
    if module_loaded {
        let state = host_model::env_path(host_model::ledger::STATE_DIR_ENV)
            .unwrap_or_else(|| under(cx.root, host_model::ledger::DEFAULT_STATE_DIR));
        if state.exists() {
            let kind = crate::selinux::label_of(&state)
                .ok()
                .flatten()
                .and_then(|l| crate::selinux::label_type(&l));
            lines.push(match kind.as_deref() {
                Some(STATE_TYPE) => CheckLine::pass(
                    "selinux-label",
                    format!("{} is {STATE_TYPE}", state.display()),
                ),
                other => CheckLine::fail(
                    "selinux-label",
                    format!(
                        "{} is {}, not {STATE_TYPE}: the hook cannot append to the usage \
                         ledger where the daemon is confined (EL10's virtqemud)",
                        state.display(),
                        other.map_or("unlabelled".to_owned(), |t| format!("labelled {t}"))
                    ),
                    format!("restorecon -R {}", state.display()),
                ),
            });
        }
    }
    let boolean = selinuxfs.join("booleans/virt_use_usb");
    if let Ok(text) = std::fs::read_to_string(&boolean) {
        lines.push(if text.split_whitespace().next() == Some("1") {
            CheckLine::pass("selinux-boolean", "virt_use_usb is on")
        } else {
            CheckLine::warn(
                "selinux-boolean",
                "virt_use_usb is off: the wrapper cannot read sysfs to tell GPU VMs from others",
                "setsebool -P virt_use_usb on",
            )
        });
    }
    lines
}

/// Whether `path` exists, following a symlink to an absolute target inside `root` (the
/// hook link points to /usr/libexec/gpu-passthrough/..., which is ROOT/usr/... here).
fn exists_in_root(root: &Path, path: &Path) -> bool {
    match std::fs::read_link(path) {
        Ok(target) if target.is_absolute() => under(root, &target.to_string_lossy()).is_file(),
        Ok(_) => path.exists(),
        Err(_) => path.is_file(),
    }
}

/// `libvirtd (libvirt) 8.0.0` gives (8, 0).
/// A key of an INI section, as nova.conf has them.
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current.eq_ignore_ascii_case(section) {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    found = Some(v.trim().to_owned());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_ini() {
        assert_eq!(
            parse_libvirt_version("libvirtd (libvirt) 8.0.0\n"),
            Some((8, 0))
        );
        assert_eq!(parse_libvirt_version("garbage"), None);
        let conf = "[DEFAULT]\n# ram_allocation_ratio = 2.0\nram_allocation_ratio = 1.0\n[pci]\nram_allocation_ratio = 9\n";
        assert_eq!(
            ini_value(conf, "DEFAULT", "ram_allocation_ratio").as_deref(),
            Some("1.0")
        );
        assert_eq!(ini_value(conf, "libvirt", "x"), None);
    }
}
