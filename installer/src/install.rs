//! `install` and `uninstall`: set a hypervisor up for GPU passthrough, and give it back
//! exactly as it was.
//!
//! install works from a plan: every file it would write (with its new content), the
//! kernel arguments, the diversion, the hook, the commands. `--dry-run` prints the plan
//! as unified diffs and command lines. Applied, each step records how to undo it in
//! /var/lib/gpu-passthrough/state.json (with a backup of every file it changes), and a
//! failing step undoes the steps before it.

use std::path::Path;

use crate::runner::Runner;

mod apply;
mod plan;
mod state;
mod undo;

use apply::*;
use plan::*;
use state::*;
use undo::*;

pub use apply::{apply, remove_lock_dirs};
pub use plan::{links_hook, missing_dirs, next_steps, plan, render, Plan};
pub use state::{FileRecord, InstallState};
pub use undo::uninstall;

pub const STATE_DIR: &str = "/var/lib/gpu-passthrough";
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

/// What one run of install or uninstall works with: the root it changes, the /proc it
/// reads, the runner of its commands, the lock it took.
pub struct Run<'a> {
    pub root: &'a Path,
    pub proc_root: &'a Path,
    pub runner: &'a Runner,
    /// The directories this run created for its lock (host paths, parents first).
    pub lock_dirs_created: Vec<String>,
}
