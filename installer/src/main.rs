//! gpu-passthrough: the operator's CLI for GPU passthrough hypervisors.

mod bookings;
mod check;
mod cmdline;
mod divert;
mod files;
mod ical;
mod install;
mod inventory;
mod metrics;
mod nova;
mod platform;
mod runner;
mod selinux;
mod usage;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::divert::{Diversion, Outcome};
use crate::files::under;
use crate::inventory::{parse_ids, Inventory, Sources};
use crate::runner::{Ran, Runner};

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
struct Cli {
    /// File-system root for everything read or written (a chroot, a test tree).
    /// Under a root other than /, grubby, dracut and restorecon are not
    /// run (they act on the running system, not on DIR; set
    /// GPU_PASSTHROUGH_RUN_UNDER_ROOT=1 to run them anyway); `libvirtd --version`
    /// is still asked, to pick the hook's place.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// sysfs to read [default: $GPU_PASSTHROUGH_SYSFS, else ROOT/sys]
    #[arg(long, global = true, value_name = "DIR")]
    sysfs: Option<PathBuf>,
    /// procfs to read [default: $GPU_PASSTHROUGH_PROC, else ROOT/proc]
    #[arg(long, global = true, value_name = "DIR")]
    proc: Option<PathBuf>,
    /// Print data as JSON (scan, check, status).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
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
        #[arg(long = "by", value_name = "KEY", value_enum)]
        by: Vec<usage::By>,
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
enum BookingsCmd {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gpu-passthrough: {err:#}");
            ExitCode::from(1)
        }
    }
}

struct Paths {
    root: PathBuf,
    sysfs: PathBuf,
    proc_root: PathBuf,
}

impl Paths {
    fn new(cli: &Cli) -> Self {
        let from_env = |flag: &Option<PathBuf>, env: &str, default: &str| {
            flag.clone()
                .or_else(|| host_model::env_path(env))
                .unwrap_or_else(|| under(&cli.root, default))
        };
        Paths {
            root: cli.root.clone(),
            sysfs: from_env(&cli.sysfs, host_model::SYSFS_ENV, "/sys"),
            proc_root: from_env(&cli.proc, host_model::PROC_ENV, "/proc"),
        }
    }

    /// $GPU_PASSTHROUGH_STATE_DIR, else ROOT/var/lib/gpu-passthrough.
    fn state_dir(&self) -> PathBuf {
        host_model::env_path(host_model::ledger::STATE_DIR_ENV)
            .unwrap_or_else(|| under(&self.root, host_model::ledger::DEFAULT_STATE_DIR))
    }

    fn sources(&self) -> Sources {
        let libvirt_run = host_model::env_path(host_model::libvirt::RUN_DIR_ENV)
            .unwrap_or_else(|| under(&self.root, host_model::libvirt::DEFAULT_RUN_DIR));
        let pci_ids = host_model::env_path(host_model::pciids::PATH_ENV).or_else(|| {
            host_model::pciids::DEFAULT_PATHS
                .iter()
                .map(|p| under(&self.root, p))
                .find(|p| p.is_file())
        });
        Sources {
            sysfs: self.sysfs.clone(),
            libvirt_run,
            pci_ids,
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let paths = Paths::new(&cli);
    match &cli.command {
        Cmd::Scan => scan(&paths, cli.json),
        Cmd::Check { gpus } => {
            let inventory = read_inventory(&paths)?;
            let runner = Runner::new(&paths.root, false);
            let lines = check::run_checks(&check::Context {
                root: &paths.root,
                sysfs: &paths.sysfs,
                proc_root: &paths.proc_root,
                runner: &runner,
                inventory: &inventory,
                wanted: gpus,
            });
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                for line in &lines {
                    println!("{line}");
                }
            }
            Ok(if lines.iter().any(check::CheckLine::is_fail) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Install {
            dry_run,
            gpus,
            restart_libvirt,
        } => {
            let runner = Runner::new(&paths.root, *dry_run);
            let lock_dirs = install::missing_dirs(&paths.root, install::STATE_DIR);
            let _lock = lock(&paths.root, *dry_run, false)?;
            let inventory = read_inventory(&paths)?;
            let host = install::Run {
                root: &paths.root,
                proc_root: &paths.proc_root,
                runner: &runner,
                lock_dirs_created: if *dry_run { Vec::new() } else { lock_dirs },
            };
            let plan = match install::plan(&host, &inventory, gpus) {
                Ok(plan) => plan,
                Err(e) => {
                    install::remove_lock_dirs(&host);
                    return Err(e);
                }
            };
            if plan.is_empty() {
                println!("this host is set up already: nothing to change");
                return Ok(ExitCode::SUCCESS);
            }
            if *dry_run {
                print!("{}", install::render(&plan));
                return Ok(ExitCode::SUCCESS);
            }
            for step in install::apply(&plan, &host)? {
                println!("{step}");
            }
            let restart = if install::links_hook(&plan) {
                restart_daemon(&runner, *restart_libvirt, &inventory)?
            } else {
                None
            };
            println!("{}", install::next_steps(&plan, restart));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Uninstall { dry_run } => {
            let runner = Runner::new(&paths.root, *dry_run);
            let _lock = lock(&paths.root, *dry_run, false)?;
            let host = install::Run {
                root: &paths.root,
                proc_root: &paths.proc_root,
                runner: &runner,
                lock_dirs_created: Vec::new(),
            };
            let prefix = if *dry_run { "would: " } else { "" };
            for step in install::uninstall(&host)? {
                println!("{prefix}{step}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Divert { dry_run } => {
            let runner = Runner::new(&paths.root, *dry_run);
            let _lock = lock(&paths.root, *dry_run, true)?;
            report(Diversion::under(&paths.root).divert(&runner)?, *dry_run)
        }
        Cmd::Undivert { dry_run } => {
            let runner = Runner::new(&paths.root, *dry_run);
            let _lock = lock(&paths.root, *dry_run, true)?;
            report(Diversion::under(&paths.root).undivert(&runner)?, *dry_run)
        }
        Cmd::Status { prometheus } => {
            if *prometheus && cli.json {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--json and --prometheus: choose one output format",
                    )
                    .exit();
            }
            status(&paths, cli.json, *prometheus)
        }
        Cmd::NovaConfig {
            release,
            gpus,
            with_siblings,
            quota,
        } => {
            if let Err(e) = nova::uses_device_spec(release) {
                // An unknown release is a usage error: exit status 2.
                Cli::command()
                    .error(
                        clap::error::ErrorKind::InvalidValue,
                        format!("--release: {e:#}"),
                    )
                    .exit();
            }
            let inventory = read_inventory(&paths)?;
            let selection = inventory.select(gpus);
            let left_out: Vec<String> = selection.left_out.iter().map(|(_, w)| w.clone()).collect();
            for why in &left_out {
                eprintln!("gpu-passthrough: warning: not offered to Nova: {why}");
            }
            let offer = if *with_siblings {
                eprintln!("gpu-passthrough: warning: {}", nova::SIBLINGS_WARNING);
                nova::Offer::WithSiblings
            } else {
                nova::Offer::GpuFunctionOnly
            };
            let text = nova::render(&selection.usable, &left_out, release, offer)?;
            let quota = if *quota {
                Some(nova::quota(&selection.usable, release)?)
            } else {
                None
            };
            if cli.json {
                let v = serde_json::json!({ "release": release, "text": text, "quota": quota });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{text}");
                if let Some(q) = &quota {
                    print!("{}", nova::render_quota(q));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bookings { command } => {
            let config = load_config(&paths)?;
            let file = under(&paths.root, &config.bookings.file.to_string_lossy());
            let now = jiff::Timestamp::now();
            let hostname = host_model::ledger::hostname(&paths.proc_root);
            match command {
                BookingsCmd::Import {
                    file: source,
                    dry_run,
                } => {
                    let (text, n) = bookings::convert(source, import_now()?)?;
                    if *dry_run {
                        print!("{text}");
                        eprintln!(
                            "gpu-passthrough: dry run: {n} booking(s) from {}; {} is unchanged",
                            source.display(),
                            file.display()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    bookings::install(&text, &file, &paths.state_dir())?;
                    println!(
                        "wrote {} ({n} booking(s) from {})",
                        file.display(),
                        source.display()
                    );
                }
                BookingsCmd::List => {
                    let all = bookings::load_and_index(&file, &paths.state_dir())?;
                    let rows = bookings::list_rows(&bookings::list(&all, &hostname, now), now);
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    } else {
                        print!("{}", bookings::list_table(&rows));
                    }
                }
                BookingsCmd::Violations => {
                    let all = bookings::load_and_index(&file, &paths.state_dir())?;
                    let inventory = read_inventory(&paths)?;
                    let v = bookings::violations(
                        &all,
                        &hostname,
                        config.bookings.match_user,
                        now,
                        &inventory.running,
                        &paths.sysfs,
                        &host_model::ledger::usage_dir(&paths.state_dir()),
                    )?;
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        print!("{}", bookings::violations_table(&v));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Usage {
            since,
            until,
            by,
            csv,
            ledger,
        } => {
            let path = ledger
                .clone()
                .unwrap_or_else(|| host_model::ledger::usage_dir(&paths.state_dir()));
            if *csv && cli.json {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--json and --csv: choose one output format",
                    )
                    .exit();
            }
            let format = if *csv {
                usage::Format::Csv
            } else if cli.json {
                usage::Format::Json
            } else {
                usage::Format::Table
            };
            print!("{}", usage::report(&path, by, *since, *until, format)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics { textfile_dir } => {
            let config = load_config(&paths)?;
            let dir = textfile_dir.clone().unwrap_or_else(|| {
                under(&paths.root, &config.metrics.textfile_dir.to_string_lossy())
            });
            let usage_dir = host_model::ledger::usage_dir(&paths.state_dir());
            let inventory = read_inventory(&paths)?;
            let now = jiff::Timestamp::now();
            let mut tally = metrics::tally(&usage_dir, now)?;
            let closed =
                metrics::close_lost_intervals(&usage_dir, &tally, &inventory.running, now)?;
            for r in closed {
                eprintln!(
                    "gpu-passthrough: domain '{}' is gone without a stop (a host crash?): closed its interval at {}",
                    r.domain, r.ts
                );
                if let Some(at) = r.time() {
                    tally.feed(at, r);
                }
            }
            let gpus = inventory.passthrough(&under(&paths.root, install::MODPROBE));
            let mut text = metrics::render(&inventory, &gpus, &tally, &paths.sysfs, now);
            if config.bookings.mode != host_model::config::BookingsMode::Off {
                let file = under(&paths.root, &config.bookings.file.to_string_lossy());
                match bookings::load_and_index(&file, &paths.state_dir()) {
                    Ok(all) => {
                        let v = bookings::violations(
                            &all,
                            &host_model::ledger::hostname(&paths.proc_root),
                            config.bookings.match_user,
                            now,
                            &inventory.running,
                            &paths.sysfs,
                            &usage_dir,
                        )?;
                        text.push_str(&metrics::unbooked(&inventory, &v));
                    }
                    Err(e) => eprintln!("gpu-passthrough: warning: no unbooked-GPU series: {e}"),
                }
            }
            metrics::write(&dir, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            write_man_pages(dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(outcome: Outcome, dry_run: bool) -> Result<ExitCode> {
    let prefix = if dry_run && outcome.changed {
        "would: "
    } else {
        ""
    };
    for step in &outcome.steps {
        println!("{prefix}{step}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Make the daemon that runs the qemu driver read the new hook: restart it when asked
/// or when no VM runs; else return the step that says which one to restart.
fn restart_daemon(runner: &Runner, asked: bool, inventory: &Inventory) -> Result<Option<String>> {
    let found = platform::qemu_daemon(runner);
    let Some(daemon) = found.daemon else {
        return Ok(Some(format!(
            "restart the libvirt daemon that runs the qemu driver (virtqemud or libvirtd; \
             cannot tell which: {}), so that it reads the hook",
            found.evidence
        )));
    };
    let service = daemon.service();
    let vms = inventory.running.len();
    if asked || vms == 0 {
        // try-restart: a socket-activated virtqemud that is not running reads the hook
        // at its next start anyway.
        let verb = if asked { "restart" } else { "try-restart" };
        match runner.run("systemctl", &[verb, service])? {
            Ran::Done(_) => {
                println!(
                    "{}: ran systemctl {verb} {service} ({}), so that it reads the hook",
                    daemon.name(),
                    found.evidence
                );
                Ok(None)
            }
            Ran::Skipped(why) => Ok(Some(format!(
                "restart {} (systemctl restart {service}; {}), so that it reads the hook \
                 ({why})",
                daemon.name(),
                found.evidence
            ))),
        }
    } else {
        Ok(Some(format!(
            "restart {} (systemctl restart {service}; {}) so that it reads the hook: {vms} \
             VM(s) run, so install did not (they keep running; --restart-libvirt does it)",
            daemon.name(),
            found.evidence
        )))
    }
}

/// Keep two installs (or an install and an RPM scriptlet) from interleaving. Waits for
/// the other one to finish.
///
/// `wait`: divert and undivert (called from RPM scriptlets) wait their turn; install and
/// uninstall, run by a person, say who holds the lock instead.
fn lock(root: &Path, dry_run: bool, wait: bool) -> Result<Option<File>> {
    if dry_run {
        return Ok(None);
    }
    let dir = under(root, "/var/lib/gpu-passthrough");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    if wait {
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another gpu-passthrough install, uninstall or divert is running (it holds {}): \
                 wait for it to finish, then run this again",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
    Ok(Some(file))
}

/// The suite's config (under --root, or $GPU_PASSTHROUGH_CONFIG), strictly; unknown
/// keys are warnings.
/// Environment variable that replaces the time `bookings import` expands recurring
/// events from (tests; RFC 3339).
const NOW_ENV: &str = "GPU_PASSTHROUGH_NOW";

fn import_now() -> Result<jiff::Timestamp> {
    match std::env::var(NOW_ENV) {
        Ok(t) if !t.is_empty() => t
            .parse()
            .with_context(|| format!("${NOW_ENV} {t:?} is not an RFC 3339 time")),
        _ => Ok(jiff::Timestamp::now()),
    }
}

fn load_config(paths: &Paths) -> Result<host_model::config::Config> {
    let path = host_model::env_path(host_model::config::PATH_ENV)
        .unwrap_or_else(|| under(&paths.root, host_model::config::DEFAULT_PATH));
    let loaded = host_model::config::load(&path)?;
    for w in &loaded.warnings {
        eprintln!("gpu-passthrough: warning: {w}");
    }
    Ok(loaded.config)
}

/// The host's GPUs; what could not be read is one warning line each on stderr.
fn read_inventory(paths: &Paths) -> Result<Inventory> {
    let inventory = Inventory::read(&paths.sources())?;
    for problem in &inventory.unreadable {
        eprintln!("gpu-passthrough: warning: {problem}");
    }
    Ok(inventory)
}

fn scan(paths: &Paths, json: bool) -> Result<ExitCode> {
    let inventory = read_inventory(paths)?;
    let entries = inventory.scan_entries();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no display-class PCI function found");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14} {:<9} {:<8} {:<14} {:>5} {:<8} {:<16} NAME",
        "ADDRESS", "IDS", "CLASS", "DRIVER", "GROUP", "NOVA", "IN USE BY"
    )?;
    for e in &entries {
        let indent = match e.role {
            "gpu" => "",
            "card" => " ",
            _ => " ~",
        };
        writeln!(
            out,
            "{:<14} {:<9} {:<8} {:<14} {:>5} {:<8} {:<16} {}",
            format!("{indent}{}", e.address),
            format!("{}:{}", e.vendor_id, e.device_id),
            e.class,
            e.driver.as_deref().unwrap_or("-"),
            e.iommu_group.map_or("-".to_owned(), |g| g.to_string()),
            e.nova_device_type,
            e.in_use_by.as_deref().unwrap_or("-"),
            e.name.as_deref().unwrap_or("-")
        )?;
    }
    let problems: Vec<&str> = entries
        .iter()
        .filter(|e| e.role == "gpu")
        .filter_map(|e| e.problem.as_deref())
        .collect();
    if !problems.is_empty() {
        writeln!(out)?;
        for p in problems {
            writeln!(out, "unusable: {p}")?;
        }
    }
    writeln!(
        out,
        "(indented: the functions of the GPU's card; ~: other members of its IOMMU group)"
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct GpuStatus<'a> {
    address: &'a str,
    vendor_id: &'a str,
    device_id: &'a str,
    name: Option<&'a str>,
    functions: Vec<&'a str>,
    state: &'static str,
    domain: Option<&'a str>,
    nova_instance: Option<&'a str>,
    nova_project: Option<&'a str>,
}

fn status(paths: &Paths, json: bool, prometheus: bool) -> Result<ExitCode> {
    let inventory = read_inventory(paths)?;
    let rows: Vec<GpuStatus<'_>> = inventory
        .passthrough(&under(&paths.root, install::MODPROBE))
        .into_iter()
        .map(|g| {
            let display = &g.functions[0].1;
            let holder = g.functions.iter().find_map(|(_, e)| e.in_use_by.as_deref());
            let nova = holder
                .and_then(|d| inventory.domain(d))
                .and_then(|d| d.nova.as_ref());
            GpuStatus {
                address: &display.address,
                vendor_id: &display.vendor_id,
                device_id: &display.device_id,
                name: display.name.as_deref(),
                functions: g
                    .functions
                    .iter()
                    .map(|(_, e)| e.address.as_str())
                    .collect(),
                state: if holder.is_some() { "in-use" } else { "free" },
                domain: holder,
                nova_instance: nova.and_then(|n| n.name.as_deref()),
                nova_project: nova.and_then(|n| n.project.as_deref()),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if prometheus {
        print!("{}", prometheus_text(&rows));
    } else if rows.is_empty() {
        println!("no GPU found");
    } else {
        for r in &rows {
            let who = match (r.domain, r.nova_instance, r.nova_project) {
                (None, ..) => "free".to_owned(),
                (Some(d), Some(i), Some(p)) => {
                    format!("in use by {d} (Nova instance '{i}', project '{p}')")
                }
                (Some(d), Some(i), None) => format!("in use by {d} (Nova instance '{i}')"),
                (Some(d), ..) => format!("in use by {d}"),
            };
            println!(
                "{} {}:{} {}: {who}",
                r.address,
                r.vendor_id,
                r.device_id,
                r.name.unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prometheus_text(rows: &[GpuStatus<'_>]) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::from(
        "# HELP gpu_passthrough_gpu_in_use Whether a running domain holds the GPU (1) or it is free (0).\n\
         # TYPE gpu_passthrough_gpu_in_use gauge\n",
    );
    for r in rows {
        let mut labels = vec![
            format!("address=\"{}\"", escape(r.address)),
            format!("device=\"{}:{}\"", r.vendor_id, r.device_id),
        ];
        for (key, value) in [
            ("name", r.name),
            ("domain", r.domain),
            ("nova_instance", r.nova_instance),
            ("project", r.nova_project),
        ] {
            if let Some(v) = value {
                labels.push(format!("{key}=\"{}\"", escape(v)));
            }
        }
        out.push_str(&format!(
            "gpu_passthrough_gpu_in_use{{{}}} {}\n",
            labels.join(","),
            u8::from(r.domain.is_some())
        ));
    }
    out
}

fn write_man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("gpu-passthrough".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("gpu-passthrough-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name.clone())));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.8"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).section("8").render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
