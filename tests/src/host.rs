//! One fake hypervisor for every binary's tests: a tempdir laid out as a host's root,
//! so the installer reads it through `--root` and the hook and the wrapper through the
//! override variables that [`HostRoot::command`] sets.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{write_file, FakeSysfs, PciFunction};

/// Where the binaries look, relative to the root (the contract's default paths).
pub const CONFIG: &str = "etc/gpu-passthrough/config.toml";
pub const BOOKINGS: &str = "etc/gpu-passthrough/bookings.json";
pub const STATE_DIR: &str = "var/lib/gpu-passthrough";
pub const LIBVIRT_RUN: &str = "run/libvirt/qemu";
pub const PCI_IDS: &str = "usr/share/hwdata/pci.ids";

/// A hypervisor's root in a tempdir: `sys/` (a [`FakeSysfs`]), `proc/`, `etc/`, `run/`,
/// `var/` and `usr/` as the helpers below write them. Nothing but `sys/` exists until a
/// test writes it, so a snapshot of the root shows exactly what a command changed.
#[derive(Debug)]
pub struct HostRoot {
    dir: TempDir,
    sysfs: FakeSysfs,
}

impl Default for HostRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl HostRoot {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sysfs = FakeSysfs::new(&dir.path().join("sys"));
        HostRoot { dir, sysfs }
    }

    /// The root itself (what `--root` gets).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the root, `rel` without a leading `/`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn sysfs(&self) -> &FakeSysfs {
        &self.sysfs
    }

    /// Add a PCI function (see [`FakeSysfs::add`]).
    pub fn add(&self, function: &PciFunction<'_>) -> &Self {
        self.sysfs.add(function);
        self
    }

    pub fn config(&self, text: &str) {
        write_file(&self.path(CONFIG), text);
    }

    pub fn pci_ids(&self, text: &str) {
        write_file(&self.path(PCI_IDS), text);
    }

    /// `/proc/meminfo` with `total` bytes, little of it free, 2 MiB huge pages.
    pub fn meminfo(&self, total: u64) {
        write_file(
            &self.path("proc/meminfo"),
            format!(
                "MemTotal:       {} kB\nMemFree:        1024 kB\nHugepagesize:       2048 kB\n",
                total / 1024
            ),
        );
    }

    /// `/proc/cpuinfo` of one CPU.
    pub fn cpu(&self, vendor: &str, flags: &str) {
        write_file(
            &self.path("proc/cpuinfo"),
            format!("processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n"),
        );
    }

    pub fn cmdline(&self, text: &str) {
        write_file(&self.path("proc/cmdline"), format!("{text}\n"));
    }

    /// A running domain as libvirt's status file: `<domstatus>` around `domain_xml`.
    pub fn running(&self, name: &str, domain_xml: &str) {
        write_file(
            &self.path(&format!("{LIBVIRT_RUN}/{name}.xml")),
            format!("<domstatus state='running' reason='booted' pid='4242'>\n<monitor path='/x' type='unix'/>\n{domain_xml}</domstatus>\n"),
        );
    }

    /// `program` with an empty environment but the variables that point the hook and
    /// the wrapper at this root (libvirt clears their environment too).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("GPU_PASSTHROUGH_CONFIG", self.path(CONFIG))
            .env("GPU_PASSTHROUGH_SYSFS", self.sysfs.root())
            .env("GPU_PASSTHROUGH_PROC", self.path("proc"))
            .env("GPU_PASSTHROUGH_LIBVIRT_RUN", self.path(LIBVIRT_RUN))
            .env("GPU_PASSTHROUGH_PCI_IDS", self.path(PCI_IDS))
            .env("GPU_PASSTHROUGH_STATE_DIR", self.path(STATE_DIR));
        c
    }
}
