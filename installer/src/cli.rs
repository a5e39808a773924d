//! The command line: every subcommand and option, with the help text that teaches them
//! (clap; the man pages come from the same definition).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::inventory::parse_ids;
use crate::usage;

const EXAMPLES: &str = "\
Examples:
  gpu-passthrough scan                   the GPUs, their functions, drivers, groups
  gpu-passthrough install --dry-run      every file diff and command, nothing changed
  gpu-passthrough install                set the host up, then reboot
  gpu-passthrough check                  after the reboot: every line should PASS
  gpu-passthrough nova-config --release 2024.1
  gpu-passthrough status --prometheus > /var/lib/node_exporter/gpu.prom

Exit status: 0 success, 1 a check or an action failed, 2 usage error.";

/// Set up and inspect NVIDIA GPU passthrough on a libvirt/KVM hypervisor.
#[derive(Debug, Parser)]
#[command(name = "gpu-passthrough", version, after_help = EXAMPLES, max_term_width = 80)]
pub struct Cli {
    /// File-system root for everything read or written (a chroot, a test tree).
    /// Under a root other than /, grubby, dracut and restorecon are not
    /// run (they act on the running system, not on DIR; set
    /// GPU_PASSTHROUGH_RUN_UNDER_ROOT=1 to run them anyway); `libvirtd --version`
    /// is still asked, to pick the hook's place.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// sysfs to read [default: $GPU_PASSTHROUGH_SYSFS, else ROOT/sys]
    #[arg(long, global = true, value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
    /// procfs to read [default: $GPU_PASSTHROUGH_PROC, else ROOT/proc]
    #[arg(long, global = true, value_name = "DIR")]
    pub proc: Option<PathBuf>,
    /// Print data as JSON (scan, check, status).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List every display-class PCI function and the functions that go with it.
    Scan,
    /// Check the host's readiness: PASS / WARN / FAIL per check; exit 1 on any FAIL.
    Check {
        /// Check these GPUs (VENDOR:DEVICE, hex) instead of every NVIDIA one.
        #[arg(long = "gpu", value_name = "VENDOR:DEVICE", value_parser = parse_ids)]
        gpus: Vec<(u16, u16)>,
    },
    /// Set the host up: IOMMU on, GPUs on vfio-pci from boot, qemu-kvm diverted to
    /// the wrapper, the libvirt hook installed. Then reboot.
    ///
    /// Kernel arguments (grubby --update-kernel=ALL, and GRUB_CMDLINE_LINUX in
    /// /etc/default/grub for future kernels): intel_iommu=on on Intel, iommu=pt,
    /// rd.driver.pre=vfio-pci. modprobe.d: vfio-pci ids, softdeps so vfio-pci wins,
    /// nouveau blacklisted. modules-load.d, dracut.conf.d, then dracut -f. The
    /// config file if absent (restorecon labels it; the SELinux module is the
    /// package's). Every changed file
    /// is backed up under /var/lib/gpu-passthrough for `uninstall`. A second run
    /// changes nothing. A failing step undoes the steps before it.
    Install {
        /// Print a unified diff of every file and every command; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Set up these GPUs (VENDOR:DEVICE, hex; repeat) instead of every NVIDIA
        /// one. Their sibling functions (audio, USB, UCSI) come along.
        #[arg(long = "gpu", value_name = "VENDOR:DEVICE", value_parser = parse_ids)]
        gpus: Vec<(u16, u16)>,
        /// Restart the daemon that runs the qemu driver (virtqemud or libvirtd, from
        /// the systemd unit states) so that it reads the hook, even with VMs running
        /// (they keep running). Without it, install restarts the daemon only when no
        /// VM runs, and otherwise says which one to restart.
        #[arg(long)]
        restart_libvirt: bool,
    },
    /// Undo `install`: every file back as it was (content and mode), what install
    /// created removed, the diversion undone, the kernel arguments removed.
    Uninstall {
        /// Print what would be undone; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Divert /usr/libexec/qemu-kvm to the wrapper (idempotent; for RPM scriptlets).
    ///
    /// The real qemu is kept as /usr/libexec/qemu-kvm.orig and the wrapper from
    /// /usr/libexec/gpu-passthrough/ takes its place. At no instant is qemu-kvm missing
    /// or half-written. After a qemu-kvm update overwrote the wrapper, the new binary
    /// becomes the new .orig. restorecon gives both files their qemu_exec_t label.
    Divert {
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Put the real qemu back at /usr/libexec/qemu-kvm (idempotent).
    Undivert {
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Each GPU: free, or held by which domain (Nova instance and project).
    Status {
        /// Prometheus text format, for node_exporter's textfile collector.
        #[arg(long)]
        prometheus: bool,
    },
    /// Print the nova.conf [pci] settings and flavor commands for this host's GPUs.
    ///
    /// One alias per GPU model, named from its ids (10de_1b02), so that every host
    /// names the same model alike; by default only each card's GPU function is
    /// offered. GPUs whose IOMMU group holds a device the host needs are left out.
    NovaConfig {
        /// OpenStack release (code name or 2024.1): device_spec from Zed on,
        /// passthrough_whitelist before.
        #[arg(long, value_name = "NAME", default_value = "gazpacho")]
        release: String,
        /// Configure these GPUs (VENDOR:DEVICE, hex) instead of every NVIDIA one.
        #[arg(long = "gpu", value_name = "VENDOR:DEVICE", value_parser = parse_ids)]
        gpus: Vec<(u16, u16)>,
        /// Offer the cards' sibling functions (HDMI audio, USB, UCSI) to Nova too, as
        /// aliases of their own. Nova does not keep one card's functions together, so
        /// a VM may get card A's GPU and card B's audio; off by default.
        #[arg(long)]
        with_siblings: bool,
        /// Also the settings that let Nova count GPUs against quotas: before 2026.2 a
        /// provider config with a CUSTOM_GPU_<VENDOR>_<DEVICE> inventory per model,
        /// flavor resources and unified limits; from 2026.2 PCI in Placement.
        #[arg(long)]
        quota: bool,
    },
    /// GPU bookings: list those of this host, the running GPU VMs without one,
    /// import a calendar's export.
    ///
    /// The file is [bookings] file (default /etc/gpu-passthrough/bookings.json);
    /// with [bookings] mode = "enforce" the hook refuses a Nova GPU start that no
    /// booking of its project covers. Its format is in the README.
    Bookings {
        #[command(subcommand)]
        command: BookingsCmd,
    },
    /// GPU-hours per project (or user, flavor, model, instance, GPU) from the usage
    /// ledger, and refusals per check.
    ///
    /// Intervals are clipped to the window; VMs still running count up to now. The
    /// ledger is STATE/usage/*.jsonl (STATE: $GPU_PASSTHROUGH_STATE_DIR, else
    /// ROOT/var/lib/gpu-passthrough); its format is in the README.
    Usage {
        /// Start of the window, inclusive: RFC 3339, or YYYY-MM-DD (midnight UTC)
        /// [default: the first of this month]
        #[arg(long, value_name = "T", value_parser = usage::parse_time)]
        since: Option<jiff::Timestamp>,
        /// End of the window, exclusive [default: now]
        #[arg(long, value_name = "T", value_parser = usage::parse_time)]
        until: Option<jiff::Timestamp>,
        /// Group by this; repeat for combinations [default: project]
        #[arg(long = "by", value_name = "KEY", value_parser = usage::key_parser())]
        by: Vec<host_model::ledger::Key>,
        /// CSV with a header line (the JSON fields as columns).
        #[arg(long)]
        csv: bool,
        /// A ledger file or directory instead of STATE/usage.
        #[arg(long, value_name = "PATH")]
        ledger: Option<PathBuf>,
    },
    /// Write the node_exporter textfile (gpu_passthrough.prom) and the ledger's
    /// heartbeat; close the intervals of VMs gone without a stop (a host crash).
    ///
    /// Run every 30 s by gpu-passthrough-metrics.timer. The file is written
    /// atomically; reading sysfs never wakes a GPU in D3cold.
    Metrics {
        /// node_exporter's textfile directory [default: [metrics] textfile_dir, else
        /// /var/lib/node_exporter/textfile_collector]
        #[arg(long, value_name = "DIR")]
        textfile_dir: Option<PathBuf>,
    },
    /// Write man pages for gpu-passthrough and its commands into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum BookingsCmd {
    /// The bookings that apply to this host, now and upcoming, as in the file.
    List,
    /// Running GPU VMs that no booking covers (exit 0 either way).
    Violations,
    /// Replace the bookings file with FILE, atomically, after checking every booking: an
    /// export is the whole truth. FILE is JSON in the bookings format, or an iCalendar
    /// (RFC 5545) export, FILE.ics: each VEVENT a booking (X-GPU-PROJECT, X-GPU-USER,
    /// X-GPU-HOST, X-GPU-ADDRESS or X-GPU-MODEL and X-GPU-COUNT; DTSTART, DTEND or
    /// DURATION; TZID time zones), recurring events expanded up to a year ahead. See the
    /// README for the whole mapping.
    Import {
        /// The export: FILE.json or FILE.ics.
        file: PathBuf,
        /// Print the bookings file it would write, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
