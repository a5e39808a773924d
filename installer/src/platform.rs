//! What the host runs: which libvirt daemon runs the qemu driver, read from the
//! systemd unit states (not guessed from the EL release).
//!
//! EL9 and EL10 default to the modular `virtqemud` (socket-activated, exits after 120 s
//! idle when no VM runs); hosts upgraded from EL8 run the monolithic `libvirtd`. Both
//! read the hooks when they start, so the one that runs the qemu driver is the one to
//! restart after the hook is installed.
//!
//! Where the hook goes is platform knowledge too: libvirt >= 6.5 runs every file in
//! hooks/qemu.d; an older one runs only hooks/qemu.

use crate::runner::{Ran, Runner};

/// The hook binary the package installs.
pub const HOOK_SOURCE: &str = "/usr/libexec/gpu-passthrough/gpu-passthrough-hook";
/// Where the hook goes on libvirt >= 6.5: a link to [`HOOK_SOURCE`].
pub const HOOK_PATH: &str = "/etc/libvirt/hooks/qemu.d/gpu-passthrough";
/// The single qemu hook of an older libvirt, used only where that file is free.
pub const LEGACY_HOOK_PATH: &str = "/etc/libvirt/hooks/qemu";
/// The first libvirt that runs the hooks in hooks/qemu.d.
pub const QEMU_D_SINCE: (u32, u32) = (6, 5);

/// `major.minor` from `libvirtd --version` output (`libvirtd (libvirt) 8.0.0`).
pub fn parse_libvirt_version(out: &str) -> Option<(u32, u32)> {
    let word = out.split_whitespace().last()?;
    let mut parts = word.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The installed libvirt's `major.minor`, if `libvirtd --version` says.
pub fn libvirt_version(runner: &Runner) -> Option<(u32, u32)> {
    match runner.query("libvirtd", &["--version"]) {
        Ok(Ran::Done(out)) => parse_libvirt_version(&out),
        _ => None,
    }
}

/// Where the hook goes with this libvirt: hooks/qemu.d unless the version is known to
/// predate it.
pub fn hook_path(version: Option<(u32, u32)>) -> &'static str {
    match version {
        Some(v) if v < QEMU_D_SINCE => LEGACY_HOOK_PATH,
        _ => HOOK_PATH,
    }
}

/// A libvirt daemon that can run the qemu driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Virtqemud,
    Libvirtd,
}

impl Daemon {
    /// The unit to restart so that it reads the hooks again.
    pub fn service(self) -> &'static str {
        match self {
            Daemon::Virtqemud => "virtqemud.service",
            Daemon::Libvirtd => "libvirtd.service",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Daemon::Virtqemud => "virtqemud",
            Daemon::Libvirtd => "libvirtd",
        }
    }
}

/// Which daemon runs the qemu driver, and the unit state that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDaemon {
    pub daemon: Option<Daemon>,
    /// `virtqemud.socket is active`, or why it cannot tell.
    pub evidence: String,
}

/// The units that start each daemon, in the order they are asked.
const UNITS: [(&str, Daemon); 4] = [
    ("virtqemud.socket", Daemon::Virtqemud),
    ("virtqemud.service", Daemon::Virtqemud),
    ("libvirtd.service", Daemon::Libvirtd),
    ("libvirtd.socket", Daemon::Libvirtd),
];

/// The active unit (`systemctl is-active`), else the enabled one (`is-enabled`), else
/// it cannot tell.
pub fn qemu_daemon(runner: &Runner) -> QemuDaemon {
    for state in ["active", "enabled"] {
        let verb = if state == "active" {
            "is-active"
        } else {
            "is-enabled"
        };
        for (unit, daemon) in UNITS {
            match runner.query_output("systemctl", &[verb, unit]) {
                Some(out) if out.trim() == state => {
                    return QemuDaemon {
                        daemon: Some(daemon),
                        evidence: format!("{unit} is {state}"),
                    }
                }
                Some(_) => {}
                None => {
                    return QemuDaemon {
                        daemon: None,
                        evidence: "systemctl is not there to ask".into(),
                    }
                }
            }
        }
    }
    QemuDaemon {
        daemon: None,
        evidence: "neither virtqemud nor libvirtd is active or enabled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_goes_to_qemu_d_from_libvirt_6_5_and_when_the_version_is_unknown() {
        assert_eq!(
            parse_libvirt_version("libvirtd (libvirt) 8.0.0\n"),
            Some((8, 0))
        );
        assert_eq!(hook_path(Some((6, 4))), LEGACY_HOOK_PATH);
        assert_eq!(hook_path(Some((6, 5))), HOOK_PATH);
        assert_eq!(hook_path(Some((11, 0))), HOOK_PATH);
        assert_eq!(hook_path(None), HOOK_PATH);
    }
}
