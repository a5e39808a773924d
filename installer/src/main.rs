//! gpu-passthrough: the operator's CLI for GPU passthrough hypervisors.

mod bookings;
mod cli;
mod cmdline;
mod divert;
mod files;
mod ical;
mod install;
mod inventory;
mod metrics;
mod nova;
mod platform;
mod readiness;
mod runner;
mod selinux;
mod status;
mod usage;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use crate::cli::{BookingsCmd, Cli, Cmd};
use crate::divert::{Diversion, Outcome};
use crate::files::under;
use crate::inventory::Inventory;
use crate::runner::{Ran, Runner};
use host_model::checks::HostPaths;

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

    /// Where the host's state is read from, under the root: what the hook reads, as
    /// the installer finds it.
    fn host_paths(&self) -> HostPaths {
        let libvirt_run = host_model::env_path(host_model::libvirt::RUN_DIR_ENV)
            .unwrap_or_else(|| under(&self.root, host_model::libvirt::DEFAULT_RUN_DIR));
        let pci_ids = host_model::env_path(host_model::pciids::PATH_ENV).or_else(|| {
            host_model::pciids::DEFAULT_PATHS
                .iter()
                .map(|p| under(&self.root, p))
                .find(|p| p.is_file())
        });
        HostPaths {
            sysfs: self.sysfs.clone(),
            proc_root: self.proc_root.clone(),
            libvirt_run,
            pci_ids: host_model::pciids::PciIds::at(pci_ids),
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let paths = Paths::new(&cli);
    match &cli.command {
        Cmd::Scan => status::scan(&paths, cli.json),
        Cmd::Check { gpus } => {
            let inventory = read_inventory(&paths)?;
            let runner = Runner::new(&paths.root, false);
            let lines = readiness::run_checks(&readiness::Context {
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
            Ok(if lines.iter().any(readiness::CheckLine::is_fail) {
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
            status::status(&paths, cli.json, *prometheus)
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
    let inventory = Inventory::read(&paths.host_paths())?;
    for problem in &inventory.unreadable {
        eprintln!("gpu-passthrough: warning: {problem}");
    }
    Ok(inventory)
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
