//! gpu-passthrough-hook: libvirt's qemu hook, installed as
//! /etc/libvirt/hooks/qemu.d/gpu-passthrough.
//!
//! libvirtd runs it as `HOOK DOMAIN OPERATION SUB_OPERATION EXTRA` with the domain XML
//! on stdin. At `prepare begin`, for a domain with PCI host devices, it checks that the
//! start can work (see `host_model::checks`) and, in enforce mode, refuses it with one
//! paragraph on stderr that virsh and Nova show. Every other call exits 0 at once: a
//! failing hook at `reconnect` makes libvirtd kill the running VM. It never calls virsh
//! or the libvirt API, which would deadlock libvirtd.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use host_model::checks::{check_bookings, check_domain, HostPaths, Report, Severity};
use host_model::config::{self, BookingsMode, HookMode};
use host_model::domain::Domain;
use host_model::ledger::{self, Event, Record};

const NAME: &str = "gpu-passthrough-hook";

const HELP: &str = "\
gpu-passthrough-hook: libvirt qemu hook that refuses VM starts that cannot work

USAGE:
    gpu-passthrough-hook DOMAIN OPERATION SUB_OPERATION EXTRA < domain.xml
    gpu-passthrough-hook --check-xml FILE|-

Four arguments are always libvirt's call, whatever they hold (a domain may be
named --help); the options below are only read in other shapes.

libvirtd runs the first form: install the hook as
/etc/libvirt/hooks/qemu.d/gpu-passthrough and restart libvirtd. At
`prepare begin`, for a domain with PCI <hostdev>s, it checks that the IOMMU
is on, each device exists, managed='no' devices are on vfio-pci, each IOMMU
group is complete, no device is held by another running domain, the host can
pin the VM's memory, memtune hard_limit >= memory + 1 GiB, and huge pages are
free. Every other operation exits 0 at once.

--check-xml runs the same checks on a saved domain XML (`virsh dumpxml NAME`,
or - for stdin) and prints one PASS/WARN/FAIL line per check.

CONFIG: [hook] in /etc/gpu-passthrough/config.toml ($GPU_PASSTHROUGH_CONFIG)
    mode = \"enforce\" | \"warn\" | \"off\"
    reserved_host_memory_mib = 4096

EXIT STATUS: 0 start allowed; 1 start refused, or --check-xml found a FAIL;
2 usage error.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Four arguments are libvirt's call, whatever they hold: a domain may be named
    // `-x` or `--help`, and a failing `reconnect` makes libvirt kill the VM. Only `prepare
    // begin` may ever fail; everything else leaves at once, without reading stdin.
    if let [domain, operation, sub_operation, _extra] = args.as_slice() {
        let event = match (operation.to_str(), sub_operation.to_str()) {
            (Some("prepare"), Some("begin")) => return prepare(&domain.to_string_lossy()),
            (Some("started"), Some("begin")) => Event::Start,
            (Some("release"), Some("end")) => Event::Stop,
            (Some("reconnect"), Some("begin")) => Event::Running,
            _ => return ExitCode::SUCCESS,
        };
        record_event(event);
        return ExitCode::SUCCESS;
    }
    match args.first().and_then(|a| a.to_str()) {
        Some("--help" | "-h") if args.len() == 1 => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") if args.len() == 1 => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--check-xml") => match &args[1..] {
            [file] => check_xml(Path::new(file)),
            _ => usage("--check-xml takes one argument: a domain XML file, or - for stdin"),
        },
        _ => usage(&format!(
            "expected libvirt's four arguments (DOMAIN OPERATION SUB_OPERATION EXTRA), \
             --check-xml FILE, --help or --version; got {} argument(s)",
            args.len()
        )),
    }
}

/// Set to 1, the ledger records domains without host devices too: for the end-to-end
/// test on a machine without GPUs. Never set on a host.
const LEDGER_ALL_DOMAINS_ENV: &str = "GPU_PASSTHROUGH_LEDGER_ALL_DOMAINS";

/// `started`, `release` and `reconnect`: append the domain's ledger record. Nothing
/// here may fail the operation (a failing `reconnect` makes libvirt kill the VM): every
/// problem is a journald warning, and the process exits 0 whatever happens, a panic
/// included.
fn record_event(event: Event) {
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(
            io::stderr(),
            "{NAME}: internal error, please report it: {info}"
        );
        std::process::exit(0);
    }));
    let mut xml = Vec::new();
    if io::stdin().read_to_end(&mut xml).is_err() {
        return;
    }
    let all = std::env::var_os(LEDGER_ALL_DOMAINS_ENV).is_some_and(|v| v == "1");
    // The common case, a VM without host devices, needs no parsing.
    if !all && !xml.windows(7).any(|w| w == b"hostdev") {
        return;
    }
    let domain = match std::str::from_utf8(&xml)
        .map_err(|e| format!("not UTF-8: {e}"))
        .and_then(|text| Domain::from_xml(text).map_err(|e| e.to_string()))
    {
        Ok(domain) => domain,
        Err(e) => {
            Log::open().warning(&format!(
                "ledger: the domain XML at {event:?} does not parse ({e}); no record written"
            ));
            return;
        }
    };
    if domain.hostdevs.is_empty() && !all {
        return;
    }
    if let Err(e) = write_record(event, &domain, &HostPaths::from_env(), None) {
        Log::open().warning(&format!(
            "ledger: {e}; the {event:?} of domain '{}' is not recorded",
            domain.name
        ));
    }
}

/// Append `domain`'s record of `event` (with the failing `checks` of a refusal).
fn write_record(
    event: Event,
    domain: &Domain,
    host: &HostPaths,
    checks: Option<Vec<String>>,
) -> io::Result<()> {
    let mut record = Record::new(
        event,
        &ledger::hostname(&host.proc_root),
        domain,
        ledger::gpus_of(domain, &host.sysfs, Some(&host.pci_ids)),
        jiff::Timestamp::now(),
    );
    record.checks = checks;
    ledger::append(&ledger::usage_dir(&ledger::state_dir_from_env()), &record).map(|_| ())
}

fn usage(message: &str) -> ExitCode {
    eprintln!("{NAME}: {message}\nRun `{NAME} --help` for usage.");
    ExitCode::from(2)
}

/// `prepare begin`: check the domain on stdin; refuse it in enforce mode.
fn prepare(name: &str) -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(
            io::stderr(),
            "{NAME}: internal error, please report it: {info}. To start VMs meanwhile, set \
             [hook] mode = \"off\" in {}",
            config::path_from_env().display()
        );
    }));
    let mut xml = Vec::new();
    let read = io::stdin().read_to_end(&mut xml);
    // The common case, a VM without host devices (neither <hostdev> nor <interface
    // type='hostdev'>), needs no parsing and no logging.
    if read.is_ok() && !xml.windows(7).any(|w| w == b"hostdev") {
        return ExitCode::SUCCESS;
    }
    let log = Log::open();
    let refuse = |message: String| {
        log.refusal(&message);
        ExitCode::from(1)
    };
    if let Err(e) = read {
        return refuse(format!("cannot read domain '{name}' from stdin: {e}"));
    }
    let config_path = config::path_from_env();
    let (config, bookings) = match config::load(&config_path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                log.warning(warning);
            }
            (loaded.config.hook, loaded.config.bookings)
        }
        Err(e) => {
            return refuse(format!(
                "refusing to start domain '{name}': the configuration is broken: {e}. Fix the \
                 file (or move it away to use the defaults)"
            ))
        }
    };
    if config.mode == HookMode::Off {
        return ExitCode::SUCCESS;
    }
    let domain = match std::str::from_utf8(&xml)
        .map_err(|e| format!("not UTF-8: {e}"))
        .and_then(|text| Domain::from_xml(text).map_err(|e| e.to_string()))
    {
        Ok(domain) => domain,
        Err(e) => {
            let message = format!(
                "domain '{name}': its XML does not parse ({e}), so it is unknown whether its \
                 host devices can work"
            );
            return match config.mode {
                HookMode::Enforce => refuse(format!(
                    "refusing to start {message}. Fix: report the XML with this message; to \
                     start it anyway, set [hook] mode = \"warn\" in {}",
                    config_path.display()
                )),
                _ => {
                    log.warning(&message);
                    ExitCode::SUCCESS
                }
            };
        }
    };
    if domain.hostdevs.is_empty() {
        return ExitCode::SUCCESS;
    }

    let host = HostPaths::from_env();
    let mut report = check_domain(&domain, &host, &config);
    match check_bookings(
        &domain,
        &host,
        &bookings,
        &bookings.file,
        Some(&ledger::state_dir_from_env().join(host_model::bookings::index::INDEX_FILE)),
        &ledger::hostname(&host.proc_root),
        jiff::Timestamp::now(),
    ) {
        Some(findings) => report.findings.extend(findings),
        None if bookings.mode != BookingsMode::Off => log.info(&format!(
            "domain {}: no Nova metadata, so not subject to bookings",
            report.domain
        )),
        None => {}
    }
    // [hook] mode = "warn" lets the host's checks refuse nothing; a booking FAIL (only in
    // [bookings] mode = "enforce") refuses whatever [hook] mode says.
    let refused = report
        .at_least(Severity::Fail)
        .any(|f| f.check == "booking" || config.mode == HookMode::Enforce);
    let verdict = match report.worst() {
        Severity::Fail if !refused => Severity::Warn,
        worst => worst,
    };
    match verdict {
        Severity::Fail => {
            let mut checks: Vec<String> = Vec::new();
            for f in report.at_least(Severity::Fail) {
                if !checks.iter().any(|c| c == f.check) {
                    checks.push(f.check.to_owned());
                }
            }
            if let Err(e) = write_record(Event::Refused, &domain, &host, Some(checks)) {
                log.warning(&format!("ledger: {e}; this refusal is not recorded"));
            }
            refuse(refusal_paragraph(&mut report, &config_path))
        }
        Severity::Pass => {
            log.info(&format!(
                "domain {}: {} host device(s), every check passed",
                report.domain,
                domain.hostdevs.len()
            ));
            ExitCode::SUCCESS
        }
        Severity::Warn => {
            let mut text = format!("domain {}: starting despite:", report.domain);
            for line in report.lines(Severity::Warn) {
                text.push_str(&format!("\n  {line}"));
            }
            log.warning(&text);
            ExitCode::SUCCESS
        }
    }
}

/// The one stderr paragraph that virsh shows: the domain, each problem with its device
/// and fix, and how to override.
fn refusal_paragraph(report: &mut Report, config_path: &Path) -> String {
    let mut text = format!("refusing to start domain {}:", report.domain);
    for line in report.lines(Severity::Fail) {
        text.push_str(&format!("\n  {line}"));
    }
    let booking = report
        .at_least(Severity::Fail)
        .any(|f| f.check == "booking");
    text.push_str(&format!(
        "\nTo start it anyway, set [{}] mode = \"warn\" in {}.",
        if booking { "bookings" } else { "hook" },
        config_path.display()
    ));
    text
}

/// `--check-xml FILE|-`: the same checks, as a report for operators.
fn check_xml(file: &Path) -> ExitCode {
    let (source, text) = if file == Path::new("-") {
        let mut text = String::new();
        let read = io::stdin().read_to_string(&mut text);
        ("stdin".to_owned(), read.map(|_| text))
    } else {
        (file.display().to_string(), std::fs::read_to_string(file))
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => return fail(&format!("cannot read {source}: {e}")),
    };
    let domain = match Domain::from_xml(&text) {
        Ok(domain) => domain,
        Err(e) => return fail(&format!("{source}: {e}")),
    };
    let config_path = config::path_from_env();
    let config = match config::load(&config_path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{NAME}: warning: {warning}");
            }
            loaded.config.hook
        }
        Err(e) => return fail(&e.to_string()),
    };
    if domain.hostdevs.is_empty() {
        println!(
            "domain '{}' has no PCI host devices: the hook lets it start without checks",
            domain.name
        );
        return ExitCode::SUCCESS;
    }
    let mut report = check_domain(&domain, &HostPaths::from_env(), &config);
    println!("domain {}:", report.domain);
    for line in report.lines(Severity::Pass) {
        println!("{line}");
    }
    let fails = report.at_least(Severity::Fail).count();
    let warns = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .count();
    let verdict = match (fails, config.mode) {
        (0, _) => "the hook would let it start".to_owned(),
        (_, HookMode::Enforce) => "the hook would refuse to start it".to_owned(),
        (_, mode) => format!("the hook would let it start (mode {mode:?}), but it will not work"),
    };
    println!("{fails} FAIL, {warns} WARN: {verdict}");
    if fails > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{NAME}: {message}");
    ExitCode::from(1)
}

/// Where the hook's messages go: journald (identifier gpu-passthrough-hook) when it is
/// there, stderr otherwise. A refusal always goes to stderr too, because virsh shows it.
struct Log {
    journald: bool,
}

impl Log {
    fn open() -> Self {
        use tracing_subscriber::prelude::*;
        let journald = tracing_journald::layer()
            .map(|layer| layer.with_syslog_identifier(NAME.to_owned()))
            .ok()
            .is_some_and(|layer| {
                tracing_subscriber::registry()
                    .with(layer)
                    .try_init()
                    .is_ok()
            });
        Log { journald }
    }

    fn refusal(&self, message: &str) {
        if self.journald {
            tracing::error!("{message}");
        }
        let _ = writeln!(io::stderr(), "{NAME}: {message}");
    }

    fn warning(&self, message: &str) {
        if self.journald {
            tracing::warn!("{message}");
        } else {
            let _ = writeln!(io::stderr(), "{NAME}: {message}");
        }
    }

    fn info(&self, message: &str) {
        if self.journald {
            tracing::info!("{message}");
        }
    }
}
