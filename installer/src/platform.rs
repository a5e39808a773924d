//! What the host runs: which libvirt daemon runs the qemu driver, read from the
//! systemd unit states (not guessed from the EL release).
//!
//! EL9 and EL10 default to the modular `virtqemud` (socket-activated, exits after 120 s
//! idle when no VM runs); hosts upgraded from EL8 run the monolithic `libvirtd`. Both
//! read the hooks when they start, so the one that runs the qemu driver is the one to
//! restart after the hook is installed.

use crate::runner::Runner;

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
