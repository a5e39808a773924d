//! The usage ledger: who used which GPU when, one JSON object per line.
//!
//! The hook appends a record at `started begin` (`start`), `release end` (`stop`),
//! `reconnect begin` (`running`) and when it refuses a start (`refused`), for domains
//! with PCI host devices. Files rotate by month: `STATE/usage/YYYY-MM.jsonl`. Each
//! record goes out in one `write` on a file opened with O_APPEND, then fsync: records
//! of concurrent hooks never interleave. The format is stable and documented in the
//! README, because other accounting tools read it.
//!
//! The reader turns records into GPU intervals: a `start` (or a `running` with nothing
//! open) opens one for its domain, a `stop` closes it; a `stop` with nothing open (libvirt
//! calls `release end` after a refused start too) is ignored; an interval still open is
//! running and counts up to the time of reading. A host that crashed wrote no `stop`:
//! `gpu-passthrough metrics` closes such intervals with a `"lost": true` stop at the last
//! heartbeat before the crash.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::Domain;
use crate::pci::{self, PciAddress};

mod usage;
pub use usage::{usage, Fields, Key, Tally, UsageRow};

/// Environment variable that replaces the state directory everywhere.
pub const STATE_DIR_ENV: &str = "GPU_PASSTHROUGH_STATE_DIR";
/// The state directory of a host.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gpu-passthrough";
/// Environment variable that replaces `uname -n` in records (tests).
pub const HOSTNAME_ENV: &str = "GPU_PASSTHROUGH_HOSTNAME";

/// The state directory in force for the hook: `$GPU_PASSTHROUGH_STATE_DIR`, else
/// /var/lib/gpu-passthrough.
pub fn state_dir_from_env() -> PathBuf {
    crate::env_path(STATE_DIR_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The ledger directory of a state directory.
pub fn usage_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("usage")
}

/// What happened to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// `started begin`: qemu runs, the devices are the VM's.
    Start,
    /// `release end`: the VM is gone.
    Stop,
    /// `reconnect begin`: the daemon restarted and found the VM running.
    Running,
    /// The hook refused the start.
    Refused,
}

/// One GPU of a record: a display-class function among the domain's host devices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuRef {
    pub address: String,
    pub vendor_id: String,
    pub device_id: String,
    pub model: Option<String>,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub ts: String,
    pub event: Event,
    pub host: String,
    pub domain: String,
    pub domain_uuid: Option<String>,
    /// The Nova instance uuid (the domain uuid) when Nova's metadata is there.
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub flavor_name: Option<String>,
    pub gpus: Vec<GpuRef>,
    /// `refused`: the names of the failing checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    /// A `stop` written by `metrics` for a domain gone without one (a host crash).
    #[serde(default, skip_serializing_if = "is_false")]
    pub lost: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Record {
    /// A record of `event` for `domain` now. `gpus`: its display-class host functions.
    pub fn new(
        event: Event,
        host: &str,
        domain: &Domain,
        gpus: Vec<GpuRef>,
        at: Timestamp,
    ) -> Self {
        let nova = domain.nova.clone().unwrap_or_default();
        Record {
            ts: format_ts(at),
            event,
            host: host.to_owned(),
            domain: domain.name.clone(),
            domain_uuid: domain.uuid.clone(),
            instance_id: domain.nova.as_ref().and(domain.uuid.clone()),
            instance_name: nova.name,
            project_id: nova.project_id,
            project_name: nova.project,
            user_id: nova.user_id,
            user_name: nova.user,
            flavor_name: nova.flavor,
            gpus,
            checks: None,
            lost: false,
        }
    }

    /// The record's time.
    pub fn time(&self) -> Option<Timestamp> {
        self.ts.parse().ok()
    }

    /// What identifies the domain across records: its uuid, else host and name.
    fn domain_key(&self) -> (&str, &str) {
        match &self.domain_uuid {
            Some(uuid) => ("", uuid.as_str()),
            None => (self.host.as_str(), self.domain.as_str()),
        }
    }
}

/// RFC 3339 in UTC, to the second: `2026-11-26T15:33:23Z`.
pub fn format_ts(at: Timestamp) -> String {
    let secs = at.as_second();
    Timestamp::from_second(secs)
        .expect("a whole second of a valid timestamp is valid")
        .to_string()
}

/// The display-class functions among `domain`'s host devices, with names from
/// `pci_ids` when given. A function sysfs cannot tell about is left out.
pub fn gpus_of(
    domain: &Domain,
    sysfs: &Path,
    pci_ids: Option<&crate::pciids::PciIds>,
) -> Vec<GpuRef> {
    let mut out = Vec::new();
    for h in &domain.hostdevs {
        let Ok(f) = pci::PciFunction::read(sysfs, h.address) else {
            continue;
        };
        if pci::base_class(f.class) != pci::CLASS_DISPLAY {
            continue;
        }
        out.push(GpuRef {
            address: h.address.to_string(),
            vendor_id: format!("{:04x}", f.vendor_id),
            device_id: format!("{:04x}", f.device_id),
            model: pci_ids.and_then(|ids| ids.name(f.vendor_id, f.device_id)),
        });
    }
    out
}

/// The host name for records: `$GPU_PASSTHROUGH_HOSTNAME`, else the kernel's node name
/// (`uname -n`, from PROC/sys/kernel/hostname).
pub fn hostname(proc_root: &Path) -> String {
    if let Ok(name) = std::env::var(HOSTNAME_ENV) {
        if !name.is_empty() {
            return name;
        }
    }
    std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Append `record` to its month's file under `usage_dir`, in one write, then fsync.
pub fn append(usage_dir: &Path, record: &Record) -> io::Result<PathBuf> {
    let month = record
        .ts
        .get(..7)
        .filter(|m| m.len() == 7)
        .unwrap_or("unknown");
    std::fs::create_dir_all(usage_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", usage_dir.display()),
        )
    })?;
    let path = usage_dir.join(format!("{month}.jsonl"));
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    let result = (|| {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)?;
        // One write: O_APPEND makes it land whole at the end, whatever else appends.
        let n = file.write(&line)?;
        if n != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {n} of {} bytes written", line.len()),
            ));
        }
        file.sync_data()
    })();
    result.map(|()| path.clone()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot append to {}: {e}", path.display()),
        )
    })
}

/// The ledger files: `path` itself if it is a file, else its `*.jsonl`, in name order
/// (which is time order).
pub fn files(path: &Path) -> io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read the ledger {}: {e}", path.display()),
            ))
        }
    };
    out.sort();
    Ok(out)
}

/// Every record of the ledger at `path`, in file order, and a message per line that is
/// not a record (a torn line after a crash, a hand edit): those are skipped.
pub fn read(path: &Path) -> io::Result<(Vec<Record>, Vec<String>)> {
    let mut records = Vec::new();
    let problems = read_lines(path, false, |_, line| {
        if let Line::Full(r) = line {
            records.push(*r);
        }
    })?;
    Ok((records, problems))
}

/// Feed the whole ledger at `path` to `tally`, in time order (files in name order,
/// which is month order; each file's records sorted, stably), holding no more than a
/// few files' records at once: a year is a dozen files of several megabytes, parsed on
/// every core. Returns a message per line that is not a record.
pub fn read_into(path: &Path, tally: &mut Tally) -> io::Result<Vec<String>> {
    read_lines(path, true, |at, line| match line {
        Line::Full(r) => tally.feed(at, *r),
        Line::Stop(key) => tally.close(at, key),
    })
}

/// A ledger line as a reader needs it. A `stop` only closes an interval, so a lean
/// read keeps just its domain.
enum Line {
    // Boxed: a file's lines are sorted, and moving small items is cheap.
    Full(Box<Record>),
    Stop((String, String)),
}

/// A `stop` line, borrowed from the file's bytes: no allocation for half the ledger.
#[derive(Deserialize)]
struct StopLine<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow)]
    domain: Cow<'a, str>,
    #[serde(borrow, default)]
    domain_uuid: Option<Cow<'a, str>>,
}

fn read_lines(
    path: &Path,
    lean: bool,
    mut each: impl FnMut(Timestamp, Line),
) -> io::Result<Vec<String>> {
    let files = files(path)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut problems = Vec::new();
    for batch in files.chunks(workers.max(1)) {
        let parsed: Vec<io::Result<FileLines>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|file| scope.spawn(move || read_file(file, lean)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a ledger reader does not panic"))
                .collect()
        });
        for result in parsed {
            let (mut lines, p) = result?;
            problems.extend(p);
            lines.sort_by_key(|(t, _)| *t);
            for (t, line) in lines {
                each(t, line);
            }
        }
    }
    Ok(problems)
}

type FileLines = (Vec<(Timestamp, Line)>, Vec<String>);

/// One ledger file's lines with their times, and a message per line that is not a
/// record.
fn read_file(file: &Path, lean: bool) -> io::Result<FileLines> {
    const STOP: &[u8] = br#""event":"stop""#;
    let mut problems = Vec::new();
    let text = std::fs::read(file).map_err(crate::cannot_read(file))?;
    let mut lines = Vec::with_capacity(text.iter().filter(|&&b| b == b'\n').count() + 1);
    let bad_ts = |i: usize, ts: &str| {
        format!(
            "{}:{}: ts {ts:?} is not an RFC 3339 time; line skipped",
            file.display(),
            i + 1
        )
    };
    let not_a_record = |i: usize, e: serde_json::Error| {
        format!(
            "{}:{}: not a ledger record ({e}); line skipped",
            file.display(),
            i + 1
        )
    };
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A JSON string holds no bare quotes: these bytes are the event itself.
        if lean && line.windows(STOP.len()).any(|w| w == STOP) {
            match serde_json::from_slice::<StopLine<'_>>(line) {
                Ok(stop) => match stop.ts.parse::<Timestamp>() {
                    Ok(at) => {
                        let key = match stop.domain_uuid {
                            Some(uuid) => (String::new(), uuid.into_owned()),
                            None => (stop.host.into_owned(), stop.domain.into_owned()),
                        };
                        lines.push((at, Line::Stop(key)));
                    }
                    Err(_) => problems.push(bad_ts(i, &stop.ts)),
                },
                Err(e) => problems.push(not_a_record(i, e)),
            }
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => match r.time() {
                Some(at) => lines.push((at, Line::Full(Box::new(r)))),
                None => problems.push(bad_ts(i, &r.ts)),
            },
            Err(e) => problems.push(not_a_record(i, e)),
        }
    }
    Ok((lines, problems))
}

/// A span of GPU use: one domain from `start` to `end` (`None`: still open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval<'r> {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// The record that opened it: who, which GPUs.
    pub record: &'r Record,
}

/// The intervals the records make, in the order they opened.
pub fn intervals(records: &[Record]) -> Vec<Interval<'_>> {
    // Each time parsed once; the sort is stable, so records of one second keep their
    // file order.
    let mut timed: Vec<(Timestamp, &Record)> = records
        .iter()
        .filter_map(|r| r.time().map(|t| (t, r)))
        .collect();
    timed.sort_by_key(|(t, _)| *t);
    let mut open: HashMap<(&str, &str), usize> = HashMap::new();
    let mut out: Vec<Interval<'_>> = Vec::new();
    for (at, r) in timed {
        let key = r.domain_key();
        match r.event {
            Event::Start => {
                // A start while one is open: the stop went missing; the old one ends here.
                if let Some(i) = open.insert(key, out.len()) {
                    out[i].end = Some(at);
                }
                out.push(Interval {
                    start: at,
                    end: None,
                    record: r,
                });
            }
            Event::Running => {
                if let std::collections::hash_map::Entry::Vacant(slot) = open.entry(key) {
                    slot.insert(out.len());
                    out.push(Interval {
                        start: at,
                        end: None,
                        record: r,
                    });
                }
            }
            Event::Stop => {
                if let Some(i) = open.remove(&key) {
                    out[i].end = Some(at.max(out[i].start));
                }
            }
            Event::Refused => {}
        }
    }
    out
}

/// The intervals still open: running domains, or ones gone without a `stop`.
pub fn open_intervals(records: &[Record]) -> Vec<Interval<'_>> {
    intervals(records)
        .into_iter()
        .filter(|i| i.end.is_none())
        .collect()
}

/// The file that holds the last heartbeat of `metrics`: one RFC 3339 line.
pub fn heartbeat_path(usage_dir: &Path) -> PathBuf {
    usage_dir.join("heartbeat")
}

/// The last heartbeat, if there is a readable one.
pub fn read_heartbeat(usage_dir: &Path) -> Option<Timestamp> {
    std::fs::read_to_string(heartbeat_path(usage_dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Which address a record's GPU is, for readers that want a `PciAddress`.
pub fn gpu_address(g: &GpuRef) -> Option<PciAddress> {
    g.address.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: &str, event: Event, domain: &str) -> Record {
        Record {
            ts: ts.into(),
            event,
            host: "h".into(),
            domain: domain.into(),
            domain_uuid: Some(format!("uuid-{domain}")),
            instance_id: None,
            instance_name: None,
            project_id: Some("p".into()),
            project_name: Some("proj".into()),
            user_id: None,
            user_name: None,
            flavor_name: None,
            gpus: vec![],
            checks: None,
            lost: false,
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn intervals_open_close_and_ignore_stray_stops() {
        let records = vec![
            rec("2026-11-01T00:00:00Z", Event::Stop, "a"), // after a refused start
            rec("2026-11-01T01:00:00Z", Event::Start, "a"),
            rec("2026-11-01T01:30:00Z", Event::Running, "a"), // libvirtd restarted
            rec("2026-11-01T03:00:00Z", Event::Stop, "a"),
            rec("2026-11-01T02:00:00Z", Event::Running, "b"), // started before the ledger
            rec("2026-11-01T04:00:00Z", Event::Refused, "c"),
        ];
        let got: Vec<(String, Timestamp, Option<Timestamp>)> = intervals(&records)
            .into_iter()
            .map(|i| (i.record.domain.clone(), i.start, i.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "a".into(),
                    t("2026-11-01T01:00:00Z"),
                    Some(t("2026-11-01T03:00:00Z"))
                ),
                ("b".into(), t("2026-11-01T02:00:00Z"), None),
            ]
        );
    }

    #[test]
    fn records_append_one_line_each_by_month_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = usage_dir(dir.path());
        let a = rec("2026-10-31T23:59:59Z", Event::Start, "a");
        let b = rec("2026-11-01T00:00:00Z", Event::Stop, "a");
        assert_eq!(append(&usage, &a).expect("a"), usage.join("2026-10.jsonl"));
        assert_eq!(append(&usage, &b).expect("b"), usage.join("2026-11.jsonl"));
        std::fs::write(usage.join("2026-12.jsonl"), "{\"torn\n").expect("write");
        let (records, problems) = read(&usage).expect("read");
        assert_eq!(records, vec![a, b]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("2026-12.jsonl:1: not a ledger record"),
            "{problems:?}"
        );
    }

    #[test]
    fn usage_clips_to_the_window_counts_open_ones_to_now_and_refusals_per_check() {
        let gpu = |a: &str| GpuRef {
            address: a.into(),
            vendor_id: "10de".into(),
            device_id: "1b02".into(),
            model: Some("TITAN Xp".into()),
        };
        let mut a_start = rec("2026-10-31T22:00:00Z", Event::Start, "a");
        a_start.gpus = vec![gpu("0000:18:00.0"), gpu("0000:86:00.0")];
        let mut a_stop = a_start.clone();
        a_stop.ts = "2026-11-01T03:00:00Z".into();
        a_stop.event = Event::Stop;
        let mut b_start = rec("2026-11-01T10:00:00Z", Event::Start, "b");
        b_start.project_id = Some("q".into());
        b_start.project_name = Some("other".into());
        b_start.gpus = vec![gpu("0000:3b:00.0")];
        let mut refused = b_start.clone();
        refused.event = Event::Refused;
        refused.ts = "2026-11-01T09:00:00Z".into();
        refused.checks = Some(vec!["memory".into(), "booking".into()]);
        let records = vec![a_start, a_stop, b_start, refused];
        let rows = usage(
            &records,
            &[Key::Project],
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-01T12:30:00Z"),
        );
        type Row = (Fields, f64, u64, Vec<(String, u64)>);
        let got: Vec<Row> = rows
            .into_iter()
            .map(|r| {
                (
                    r.fields,
                    r.gpu_hours,
                    r.refusals,
                    r.refusals_by_check.into_iter().collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    vec![
                        ("project_id", Some("p".into())),
                        ("project_name", Some("proj".into()))
                    ],
                    6.0, // 3 h in the window, 2 GPUs
                    0,
                    vec![]
                ),
                (
                    vec![
                        ("project_id", Some("q".into())),
                        ("project_name", Some("other".into()))
                    ],
                    2.5, // running: up to now
                    1,
                    vec![("booking".into(), 1), ("memory".into(), 1)]
                ),
            ]
        );
        let by_gpu = usage(
            &records,
            &[Key::Gpu],
            t("2026-10-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-01T12:30:00Z"),
        );
        let hours: Vec<(Option<String>, f64)> = by_gpu
            .iter()
            .map(|r| (r.fields[0].1.clone(), r.gpu_hours))
            .collect();
        assert_eq!(
            hours,
            vec![
                (Some("0000:18:00.0".into()), 5.0),
                (Some("0000:3b:00.0".into()), 2.5),
                (Some("0000:86:00.0".into()), 5.0)
            ]
        );
    }

    #[test]
    fn timestamps_are_utc_seconds() {
        assert_eq!(
            format_ts(t("2026-11-26T16:33:23.75+01:00")),
            "2026-11-26T15:33:23Z"
        );
    }

    #[test]
    fn a_record_is_one_json_line_with_lost_only_when_true() {
        let mut r = rec("2026-11-01T00:00:00Z", Event::Stop, "a");
        let line = serde_json::to_string(&r).expect("serialize");
        assert_eq!(
            line,
            r#"{"ts":"2026-11-01T00:00:00Z","event":"stop","host":"h","domain":"a","domain_uuid":"uuid-a","instance_id":null,"instance_name":null,"project_id":"p","project_name":"proj","user_id":null,"user_name":null,"flavor_name":null,"gpus":[]}"#
        );
        r.lost = true;
        let line = serde_json::to_string(&r).expect("serialize");
        assert!(line.ends_with(r#""gpus":[],"lost":true}"#), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).expect("parse"), r);
    }

    #[test]
    fn a_domains_gpus_are_its_display_functions_that_sysfs_knows() {
        use integration_tests::{FakeSysfs, PciFunction};
        let dir = tempfile::tempdir().expect("tempdir");
        let sysfs = FakeSysfs::new(dir.path());
        for (address, device, class) in [
            ("0000:18:00.0", 0x1b02, 0x030000),
            ("0000:18:00.1", 0x10ef, 0x040300),
            ("0000:3b:00.0", 0x1eb8, 0x030200),
        ] {
            sysfs.add(&PciFunction::new(
                address,
                0x10de,
                device,
                class,
                Some("vfio-pci"),
                Some(30),
            ));
        }
        let ids = dir.path().join("pci.ids");
        std::fs::write(&ids, "10de  NVIDIA Corporation\n\t1b02  GP102 [TITAN Xp]\n").expect("ids");
        let hostdev = |bus: &str, function: &str| {
            format!("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x{bus}' slot='0x00' function='0x{function}'/></source></hostdev>")
        };
        let domain = Domain::from_xml(&format!(
            "<domain><name>x</name><memory>1</memory><devices>{}{}{}{}</devices></domain>",
            hostdev("18", "0"),
            hostdev("18", "1"),
            hostdev("99", "0"),
            hostdev("3b", "0"),
        ))
        .expect("domain");
        let gpu = |address: &str, device: &str, model: Option<&str>| GpuRef {
            address: address.into(),
            vendor_id: "10de".into(),
            device_id: device.into(),
            model: model.map(str::to_owned),
        };
        let pci_ids = crate::pciids::PciIds::at(Some(ids));
        assert_eq!(
            gpus_of(&domain, dir.path(), Some(&pci_ids)),
            vec![
                gpu(
                    "0000:18:00.0",
                    "1b02",
                    Some("NVIDIA Corporation GP102 [TITAN Xp]")
                ),
                // The vendor alone where pci.ids does not know the device.
                gpu("0000:3b:00.0", "1eb8", Some("NVIDIA Corporation")),
            ]
        );
        assert_eq!(
            gpus_of(&domain, dir.path(), None),
            vec![
                gpu("0000:18:00.0", "1b02", None),
                gpu("0000:3b:00.0", "1eb8", None)
            ]
        );
    }

    #[test]
    fn the_state_dir_and_host_name_come_from_the_environment_else_the_host() {
        // The only unit test that touches these variables.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sys/kernel")).expect("mkdir");
        std::fs::write(dir.path().join("sys/kernel/hostname"), "gpu-node-7\n").expect("write");
        std::env::set_var(HOSTNAME_ENV, "from-env");
        std::env::set_var(STATE_DIR_ENV, "/tmp/state");
        assert_eq!(hostname(dir.path()), "from-env");
        assert_eq!(state_dir_from_env(), PathBuf::from("/tmp/state"));
        std::env::set_var(HOSTNAME_ENV, "");
        std::env::remove_var(STATE_DIR_ENV);
        assert_eq!(hostname(dir.path()), "gpu-node-7");
        assert_eq!(hostname(&dir.path().join("none")), "unknown");
        assert_eq!(state_dir_from_env(), PathBuf::from(DEFAULT_STATE_DIR));
        std::env::remove_var(HOSTNAME_ENV);
    }

    #[test]
    fn the_ledgers_files_are_its_jsonl_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = dir.path().join("usage");
        std::fs::create_dir(&usage).expect("mkdir");
        for name in [
            "2026-11.jsonl",
            "2026-09.jsonl",
            "heartbeat",
            "2026-10.jsonl.tmp",
        ] {
            std::fs::write(usage.join(name), "").expect("write");
        }
        assert_eq!(
            files(&usage).expect("files"),
            vec![usage.join("2026-09.jsonl"), usage.join("2026-11.jsonl")]
        );
        let one = usage.join("2026-11.jsonl");
        assert_eq!(files(&one).expect("file"), vec![one.clone()]);
        assert_eq!(
            files(&dir.path().join("none")).expect("none"),
            Vec::<PathBuf>::new()
        );
        let under_a_file = one.join("x");
        let e = files(&under_a_file).expect_err("not a directory");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read the ledger {}: Not a directory (os error 20)",
                under_a_file.display()
            )
        );
    }

    #[test]
    fn a_lean_read_tallies_whole_files_and_names_the_lines_it_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = usage_dir(dir.path());
        let gpu = |a: &str| GpuRef {
            address: a.into(),
            vendor_id: "10de".into(),
            device_id: "1b02".into(),
            model: None,
        };
        let mut start = rec("2026-10-31T23:00:00Z", Event::Start, "a");
        start.gpus = vec![gpu("0000:18:00.0"), gpu("0000:3b:00.0")];
        let mut stop = start.clone();
        stop.ts = "2026-11-01T01:00:00Z".into();
        stop.event = Event::Stop;
        append(&usage, &start).expect("start");
        append(&usage, &stop).expect("stop");
        let nov = usage.join("2026-11.jsonl");
        let mut text = std::fs::read_to_string(&nov).expect("read");
        text.push_str("{\"torn\n");
        text.push_str(r#"{"ts":"yesterday","event":"stop","host":"h","domain":"a"}"#);
        text.push('\n');
        std::fs::write(&nov, text).expect("write");
        let mut tally = Tally::new(
            &[Key::Project],
            t("2026-10-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-02T00:00:00Z"),
        );
        let problems = read_into(&usage, &mut tally).expect("read");
        assert_eq!(
            problems,
            vec![
                format!("{}:2: not a ledger record (EOF while parsing a string at line 1 column 6); line skipped", nov.display()),
                format!("{}:3: ts \"yesterday\" is not an RFC 3339 time; line skipped", nov.display()),
            ]
        );
        let rows: Vec<(Fields, f64)> = tally
            .rows()
            .into_iter()
            .map(|r| (r.fields, r.gpu_hours))
            .collect();
        assert_eq!(
            rows,
            vec![(
                vec![
                    ("project_id", Some("p".into())),
                    ("project_name", Some("proj".into()))
                ],
                4.0 // 2 h, 2 GPUs, across the month's end
            )]
        );
    }

    #[test]
    fn open_intervals_heartbeat_and_gpu_addresses() {
        let records = vec![
            rec("2026-11-01T01:00:00Z", Event::Start, "a"),
            rec("2026-11-01T02:00:00Z", Event::Start, "b"),
            rec("2026-11-01T03:00:00Z", Event::Stop, "a"),
        ];
        let open: Vec<(&str, Timestamp)> = open_intervals(&records)
            .iter()
            .map(|i| (i.record.domain.as_str(), i.start))
            .collect();
        assert_eq!(open, vec![("b", t("2026-11-01T02:00:00Z"))]);

        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(heartbeat_path(dir.path()), dir.path().join("heartbeat"));
        assert_eq!(read_heartbeat(dir.path()), None);
        std::fs::write(dir.path().join("heartbeat"), "2026-11-01T03:00:05Z\n").expect("write");
        assert_eq!(read_heartbeat(dir.path()), Some(t("2026-11-01T03:00:05Z")));
        std::fs::write(dir.path().join("heartbeat"), "soon\n").expect("write");
        assert_eq!(read_heartbeat(dir.path()), None);

        let gpu = |address: &str| GpuRef {
            address: address.into(),
            vendor_id: "10de".into(),
            device_id: "1b02".into(),
            model: None,
        };
        assert_eq!(
            gpu_address(&gpu("0000:18:00.0")),
            Some("0000:18:00.0".parse().expect("address"))
        );
        assert_eq!(gpu_address(&gpu("18:00")), None);
    }

    #[test]
    fn keys_by_name_and_every_key_field_of_a_full_record() {
        let names: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            ["project", "user", "flavor", "model", "instance", "gpu"]
        );
        for key in Key::ALL {
            assert_eq!(Key::named(key.name()), Some(key));
        }
        assert_eq!(Key::named("projects"), None);
        assert_eq!(Key::named(""), None);

        let gpu = |address: &str, device: &str, model: &str| GpuRef {
            address: address.into(),
            vendor_id: "10de".into(),
            device_id: device.into(),
            model: Some(model.into()),
        };
        let mut start = rec("2026-11-01T00:00:00Z", Event::Start, "instance-0000002a");
        start.instance_id = Some("uuid-2a".into());
        start.instance_name = Some("worker-1".into());
        start.user_id = Some("u1".into());
        start.user_name = Some("alice".into());
        start.flavor_name = Some("g2.mixed".into());
        start.gpus = vec![
            gpu("0000:18:00.0", "1b02", "TITAN Xp"),
            gpu("0000:3b:00.0", "1eb8", "Tesla T4"),
        ];
        let mut stop = start.clone();
        stop.event = Event::Stop;
        stop.ts = "2026-11-01T01:30:00Z".into();
        let rows = usage(
            &[start, stop],
            &Key::ALL,
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-02T00:00:00Z"),
        );
        let got: Vec<(Fields, f64)> = rows.into_iter().map(|r| (r.fields, r.gpu_hours)).collect();
        let fields = |address: &str, device: &str, model: &str| -> Fields {
            vec![
                ("project_id", Some("p".into())),
                ("project_name", Some("proj".into())),
                ("user_id", Some("u1".into())),
                ("user_name", Some("alice".into())),
                ("flavor_name", Some("g2.mixed".into())),
                ("vendor_id", Some("10de".into())),
                ("device_id", Some(device.into())),
                ("model", Some(model.into())),
                ("instance_id", Some("uuid-2a".into())),
                ("instance_name", Some("worker-1".into())),
                ("address", Some(address.into())),
            ]
        };
        assert_eq!(
            got,
            vec![
                (fields("0000:18:00.0", "1b02", "TITAN Xp"), 1.5),
                (fields("0000:3b:00.0", "1eb8", "Tesla T4"), 1.5),
            ]
        );
    }

    #[test]
    fn time_outside_the_window_counts_nothing_and_a_start_now_counts_zero() {
        let gpu = GpuRef {
            address: "0000:18:00.0".into(),
            vendor_id: "10de".into(),
            device_id: "1b02".into(),
            model: None,
        };
        let mut before = rec("2026-10-31T20:00:00Z", Event::Start, "early");
        before.gpus = vec![gpu.clone()];
        let mut before_stop = before.clone();
        before_stop.event = Event::Stop;
        before_stop.ts = "2026-10-31T22:00:00Z".into();
        let mut now = rec("2026-11-01T12:00:00Z", Event::Start, "just-now");
        now.gpus = vec![gpu];
        now.project_id = Some("q".into());
        let rows = usage(
            &[before, before_stop, now],
            &[Key::Project],
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-01T12:00:00Z"),
        );
        let got: Vec<(Fields, f64)> = rows.into_iter().map(|r| (r.fields, r.gpu_hours)).collect();
        // No row for the interval before the window; a row of 0 hours for the VM that
        // started this instant (its counter series starts at zero).
        assert_eq!(
            got,
            vec![(
                vec![
                    ("project_id", Some("q".into())),
                    ("project_name", Some("proj".into()))
                ],
                0.0
            )]
        );
    }

    #[test]
    fn refusals_count_in_the_window_and_without_gpus_too() {
        let refused = |ts: &str| {
            let mut r = rec(ts, Event::Refused, "r");
            r.checks = Some(vec!["memory".into()]);
            r
        };
        // Two before the window, one at its start, one inside, one at its end: the
        // window is [since, until).
        let records = vec![
            refused("2026-10-31T23:59:58Z"),
            refused("2026-10-31T23:59:59Z"),
            refused("2026-11-01T00:00:00Z"),
            refused("2026-11-30T23:59:59Z"),
            refused("2026-12-01T00:00:00Z"),
        ];
        // By GPU, for records without GPUs (a refusal before any GPU was read).
        let rows = usage(
            &records,
            &[Key::Gpu],
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-12-02T00:00:00Z"),
        );
        type Row = (Fields, u64, Vec<(String, u64)>);
        let got: Vec<Row> = rows
            .into_iter()
            .map(|r| {
                (
                    r.fields,
                    r.refusals,
                    r.refusals_by_check.into_iter().collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(
                vec![("address", None), ("model", None)],
                2,
                vec![("memory".into(), 2)]
            )]
        );
    }

    #[test]
    fn the_open_intervals_of_a_tally_oldest_first() {
        let mut tally = Tally::new(
            &[Key::Project],
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            t("2026-11-02T00:00:00Z"),
        );
        for (ts, event, domain) in [
            ("2026-11-01T01:00:00Z", Event::Start, "b"),
            ("2026-11-01T01:00:00Z", Event::Start, "a"),
            ("2026-11-01T00:30:00Z", Event::Running, "c"),
            ("2026-11-01T02:00:00Z", Event::Start, "d"),
            ("2026-11-01T03:00:00Z", Event::Stop, "d"),
        ] {
            tally.feed(t(ts), rec(ts, event, domain));
        }
        let open: Vec<(Timestamp, &str)> = tally
            .open()
            .into_iter()
            .map(|(at, r)| (at, r.domain.as_str()))
            .collect();
        assert_eq!(
            open,
            vec![
                (t("2026-11-01T00:30:00Z"), "c"),
                (t("2026-11-01T01:00:00Z"), "a"),
                (t("2026-11-01T01:00:00Z"), "b"),
            ]
        );
    }
}
