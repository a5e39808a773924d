//! GPU bookings: who may hold which GPUs of this host, when.
//!
//! The file (`[bookings] file`, default /etc/gpu-passthrough/bookings.json) is
//! `{"bookings": [{"id", "project", "user"?, "host"?, "gpu"? | "model"?, "count"?,
//! "start", "end"}]}`. A booking applies on its host (`uname -n`, short or full; every
//! host without `host`) to the GPU it names, or to `count` GPUs of its model (any model
//! without either), from `start` (inclusive) to `end` (exclusive). Its project and user
//! match Nova's id or name; one without `user` covers every user of its project, and
//! the user counts only with `match_user`.
//!
//! Who may start now: the project's running domains use its bookings first (a GPU a
//! booking names uses that booking, any other GPU the model bookings), then the new
//! domain's GPUs must each find room.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::NovaInstance;
use crate::ledger::GpuRef;
use crate::pci::PciAddress;

pub mod index;

/// One booking as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    pub start: String,
    pub end: String,
}

fn one() -> u32 {
    1
}

/// What a booking is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gpu(PciAddress),
    Model(u16, u16),
    Any,
}

/// A checked booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub entry: Entry,
    pub target: Target,
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Booking {
    /// Whether it applies on the host named `hostname` (`uname -n`).
    pub fn applies_on(&self, hostname: &str) -> bool {
        let Some(host) = &self.entry.host else {
            return true;
        };
        let short = |h: &str| h.split('.').next().unwrap_or(h).to_ascii_lowercase();
        host.eq_ignore_ascii_case(hostname) || short(host) == short(hostname)
    }

    pub fn covers(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }

    /// Whether it is the project's (and with `match_user` the user's) of `nova`.
    pub fn belongs_to(&self, nova: &NovaInstance, match_user: bool) -> bool {
        let is = |want: &str, id: &Option<String>, name: &Option<String>| {
            id.as_deref() == Some(want) || name.as_deref() == Some(want)
        };
        is(&self.entry.project, &nova.project_id, &nova.project)
            && (!match_user
                || self
                    .entry
                    .user
                    .as_deref()
                    .is_none_or(|u| is(u, &nova.user_id, &nova.user)))
    }

    /// Whether it is for `gpu` (by its address, or its model, or any).
    pub fn fits(&self, gpu: &GpuRef) -> bool {
        match self.target {
            Target::Gpu(a) => gpu.address.parse::<PciAddress>().is_ok_and(|g| g == a),
            Target::Model(v, d) => gpu_ids(gpu) == Some((v, d)),
            Target::Any => true,
        }
    }

    fn capacity(&self) -> u32 {
        match self.target {
            Target::Gpu(_) => 1,
            _ => self.entry.count,
        }
    }

    /// `b-17 (climate-lab, 0000:18:00.0, 2026-12-01T08:00:00Z to ...)`
    pub fn describe(&self) -> String {
        let what = match self.target {
            Target::Gpu(a) => a.to_string(),
            Target::Model(v, d) => format!("{} x {v:04x}:{d:04x}", self.entry.count),
            Target::Any => format!("{} GPU(s)", self.entry.count),
        };
        format!(
            "{} ({}, {what}, {} to {})",
            self.entry.id,
            self.entry.project,
            crate::ledger::format_ts(self.start),
            crate::ledger::format_ts(self.end)
        )
    }
}

fn gpu_ids(gpu: &GpuRef) -> Option<(u16, u16)> {
    Some((
        u16::from_str_radix(&gpu.vendor_id, 16).ok()?,
        u16::from_str_radix(&gpu.device_id, 16).ok()?,
    ))
}

/// Why a bookings file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingsError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for BookingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for BookingsError {}

/// Read and check the bookings file. A missing file is an error too: whoever chose
/// to use bookings meant to have them.
pub fn load(path: &Path) -> Result<Vec<Booking>, BookingsError> {
    let err = |message: String| BookingsError {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    parse(&text).map_err(err)
}

/// Check the text of a bookings file: every entry, naming the one that is wrong.
pub fn parse(text: &str) -> Result<Vec<Booking>, String> {
    parse_matching(text, &[])
}

/// Like [`parse`], but check and keep only the bookings whose text names one of
/// `names` as a whole JSON string (a project's or user's id or name): the hook's view,
/// which must stay fast with thousands of other projects' bookings in the file. The
/// file's JSON is checked whole; `names` empty means every booking.
pub fn parse_matching(text: &str, names: &[&str]) -> Result<Vec<Booking>, String> {
    let spans = spans(text)?;
    select(text.as_bytes(), &spans, names)
}

/// Where each booking of the file stands, as byte ranges: the whole document's JSON is
/// checked here, each booking only delimited.
pub(crate) fn spans(text: &str) -> Result<Vec<(usize, usize)>, String> {
    let syntax = |e: serde_json::Error| {
        format!(
            "line {}, column {}: {}; expected {{\"bookings\": [{{\"id\", \"project\", \"start\", \"end\", ...}}]}}",
            e.line(),
            e.column(),
            without_position(&e)
        )
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw<'a> {
        #[serde(borrow)]
        bookings: Vec<&'a serde_json::value::RawValue>,
    }
    let raw: Raw<'_> = serde_json::from_str(text).map_err(syntax)?;
    let base = text.as_ptr() as usize;
    Ok(raw
        .bookings
        .iter()
        .map(|r| {
            let start = r.get().as_ptr() as usize - base;
            (start, start + r.get().len())
        })
        .collect())
}

/// serde_json's message without its " at line L column C": the caller says where,
/// in the file's terms.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Check and keep the bookings at `spans` of `text` that name one of `names` (every
/// one when `names` is empty).
pub(crate) fn select(
    text: &[u8],
    spans: &[(usize, usize)],
    names: &[&str],
) -> Result<Vec<Booking>, String> {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| serde_json::to_string(n).expect("a string serializes"))
        .collect();
    // Where the names stand in the text: one search each over the whole file, not one
    // per booking.
    let mut hits: Vec<usize> = quoted
        .iter()
        .flat_map(|q| memchr::memmem::find_iter(text, q.as_bytes()))
        .collect();
    hits.sort_unstable();
    // The bookings around the hits (spans are in file order), each once.
    let mut chosen: Vec<usize> = if quoted.is_empty() {
        (0..spans.len()).collect()
    } else {
        hits.iter()
            .filter_map(|&h| {
                let i = spans.partition_point(|&(_, end)| end <= h);
                (i < spans.len() && spans[i].0 <= h).then_some(i)
            })
            .collect()
    };
    chosen.dedup();
    let mut out = Vec::new();
    for i in chosen {
        let (start, end) = spans[i];
        let entry: Entry = serde_json::from_slice(&text[start..end]).map_err(|e| {
            // The position within the file: the entry's offset plus the error's.
            let line = memchr::memchr_iter(b'\n', &text[..start]).count() + e.line();
            format!("line {line}: booking {}: {}", i + 1, without_position(&e))
        })?;
        out.push(check_entry(i, entry)?);
    }
    Ok(out)
}

/// One entry's values: times, order, count, target.
fn check_entry(i: usize, entry: Entry) -> Result<Booking, String> {
    let bad = |m: String| format!("booking {} ({:?}): {m}", i + 1, entry.id);
    let time = |what: &str, s: &str| {
        s.parse::<Timestamp>()
            .map_err(|_| bad(format!("{what} {s:?} is not an RFC 3339 time")))
    };
    let start = time("start", &entry.start)?;
    let end = time("end", &entry.end)?;
    if end <= start {
        return Err(bad("end is not after start".into()));
    }
    if entry.count == 0 {
        return Err(bad("count must be at least 1".into()));
    }
    let target = match (&entry.gpu, &entry.model) {
        (Some(_), Some(_)) => return Err(bad("give gpu or model, not both".into())),
        (Some(g), None) => Target::Gpu(g.parse().map_err(|e| bad(format!("gpu: {e}")))?),
        (None, Some(m)) => {
            let ids = m.split_once(':').and_then(|(v, d)| {
                (v.len() == 4 && d.len() == 4)
                    .then(|| {
                        Some((
                            u16::from_str_radix(v, 16).ok()?,
                            u16::from_str_radix(d, 16).ok()?,
                        ))
                    })
                    .flatten()
            });
            let (v, d) =
                ids.ok_or_else(|| bad(format!("model {m:?} is not VENDOR:DEVICE in hex")))?;
            Target::Model(v, d)
        }
        (None, None) => Target::Any,
    };
    Ok(Booking {
        entry,
        target,
        start,
        end,
    })
}

/// [`load`] for the hook: only the bookings that name one of `names`, read through the
/// index at `index` when it describes the file as it is now (see [`index`]), else
/// from the whole file, checked whole.
pub fn load_matching(
    path: &Path,
    names: &[&str],
    index: Option<&Path>,
) -> Result<Vec<Booking>, BookingsError> {
    let err = |message: String| BookingsError {
        path: path.to_owned(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if let Some(found) = index.and_then(|ix| index::load_indexed(&file, &meta, ix, names)) {
        return found.map_err(err);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    parse_matching(&text, names).map_err(err)
}

/// A domain that holds (or wants) GPUs, for the allocation.
#[derive(Debug, Clone)]
pub struct Holder<'a> {
    pub name: &'a str,
    pub nova: &'a NovaInstance,
    pub gpus: &'a [GpuRef],
}

/// Why a GPU of the new domain has no booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    pub gpu: GpuRef,
    pub why: String,
    /// The project's next booking that would cover it.
    pub next: Option<String>,
}

/// Which of `want`'s GPUs no booking covers at `now`, after `running` (the project's
/// other domains on this host) have used theirs.
pub fn uncovered(
    bookings: &[Booking],
    hostname: &str,
    match_user: bool,
    now: Timestamp,
    running: &[Holder<'_>],
    want: &Holder<'_>,
) -> Vec<Uncovered> {
    let mine: Vec<&Booking> = bookings
        .iter()
        .filter(|b| b.applies_on(hostname) && b.belongs_to(want.nova, match_user))
        .collect();
    let mut room: BTreeMap<usize, u32> = mine
        .iter()
        .enumerate()
        .filter(|(_, b)| b.covers(now))
        .map(|(i, b)| (i, b.capacity()))
        .collect();
    // A GPU uses the booking that names it, else a model booking, else an any-GPU one.
    let take = |gpu: &GpuRef, room: &mut BTreeMap<usize, u32>| -> bool {
        for rank in [0, 1, 2] {
            let found = room.iter().find(|(i, n)| {
                let b = mine[**i];
                **n > 0
                    && b.fits(gpu)
                    && matches!(
                        (rank, b.target),
                        (0, Target::Gpu(_)) | (1, Target::Model(..)) | (2, Target::Any)
                    )
            });
            if let Some((&i, _)) = found {
                *room.get_mut(&i).expect("found in room") -= 1;
                return true;
            }
        }
        false
    };
    for other in running {
        if other.name == want.name || !same_owner(other.nova, want.nova, match_user) {
            continue;
        }
        for gpu in other.gpus {
            take(gpu, &mut room);
        }
    }
    let mut out = Vec::new();
    for gpu in want.gpus {
        if take(gpu, &mut room) {
            continue;
        }
        let fitting: Vec<&&Booking> = mine.iter().filter(|b| b.fits(gpu)).collect();
        let why = if fitting.is_empty() {
            "the project has no booking for it on this host".to_owned()
        } else if fitting.iter().any(|b| b.covers(now)) {
            "the project's bookings that cover now are used up by its running VMs".to_owned()
        } else {
            "none of the project's bookings for it covers now".to_owned()
        };
        let next = fitting
            .iter()
            .filter(|b| b.start > now)
            .min_by_key(|b| b.start)
            .map(|b| b.describe());
        out.push(Uncovered {
            gpu: gpu.clone(),
            why,
            next,
        });
    }
    out
}

fn same_owner(a: &NovaInstance, b: &NovaInstance, match_user: bool) -> bool {
    let same = |x: &Option<String>, y: &Option<String>| x.is_some() && x == y;
    (same(&a.project_id, &b.project_id) || same(&a.project, &b.project))
        && (!match_user || same(&a.user_id, &b.user_id) || same(&a.user, &b.user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(address: &str, device: &str) -> GpuRef {
        GpuRef {
            address: address.into(),
            vendor_id: "10de".into(),
            device_id: device.into(),
            model: None,
        }
    }

    fn nova(project: &str, user: &str) -> NovaInstance {
        NovaInstance {
            project: Some(project.into()),
            project_id: Some(format!("{project}-id")),
            user: Some(user.into()),
            user_id: Some(format!("{user}-id")),
            ..NovaInstance::default()
        }
    }

    const FILE: &str = r#"{"bookings": [
      {"id": "b1", "project": "climate", "gpu": "0000:18:00.0", "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
      {"id": "b2", "project": "climate-id", "model": "10de:1eb8", "count": 2, "host": "gpu-node-1.example.org", "start": "2026-11-01T00:00:00Z", "end": "2026-11-20T00:00:00Z"},
      {"id": "b3", "project": "climate", "user": "alice", "model": "10de:1eb8", "start": "2026-11-25T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
      {"id": "b4", "project": "genome", "model": "10de:1eb8", "start": "2026-12-01T08:00:00+01:00", "end": "2026-12-02T00:00:00Z"}
    ]}"#;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn address_and_model_bookings_with_counts_and_running_vms_first() {
        let b = parse(FILE).expect("parse");
        let climate = nova("climate", "bob");
        let t4s = [gpu("0000:3b:00.0", "1eb8"), gpu("0000:af:00.0", "1eb8")];
        let titan = [gpu("0000:18:00.0", "1b02")];
        let now = t("2026-11-10T12:00:00Z");
        // The Titan by its address, two T4s by the model booking (short host name).
        let want = Holder {
            name: "a",
            nova: &climate,
            gpus: &titan,
        };
        assert_eq!(uncovered(&b, "gpu-node-1", false, now, &[], &want), vec![]);
        let want = Holder {
            name: "b",
            nova: &climate,
            gpus: &t4s,
        };
        assert_eq!(uncovered(&b, "gpu-node-1", false, now, &[], &want), vec![]);
        // A running VM of the project uses one T4 booking first: one left for two.
        let other = climate.clone();
        let running = [Holder {
            name: "r",
            nova: &other,
            gpus: &t4s[..1],
        }];
        let got = uncovered(&b, "gpu-node-1", false, now, &running, &want);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].gpu.address, "0000:af:00.0");
        assert_eq!(
            got[0].why,
            "the project's bookings that cover now are used up by its running VMs"
        );
        // Another host: b2 is not for it.
        let got = uncovered(&b, "gpu-node-2", false, now, &[], &want);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].why,
            "none of the project's bookings for it covers now"
        );
        assert_eq!(got[0].next.as_deref().map(|n| &n[..2]), Some("b3"));
    }

    #[test]
    fn users_count_only_with_match_user_and_zones_are_read() {
        let b = parse(FILE).expect("parse");
        let now = t("2026-11-26T00:00:00Z");
        let t4 = [gpu("0000:3b:00.0", "1eb8")];
        let bob = nova("climate", "bob");
        let alice = nova("climate", "alice");
        let want = |n| Holder {
            name: "x",
            nova: n,
            gpus: &t4,
        };
        assert_eq!(uncovered(&b, "h", false, now, &[], &want(&bob)), vec![]);
        assert_eq!(uncovered(&b, "h", true, now, &[], &want(&alice)), vec![]);
        assert_eq!(uncovered(&b, "h", true, now, &[], &want(&bob)).len(), 1);
        // b4 starts at 07:00 UTC.
        let genome = nova("genome", "g");
        let got = uncovered(&b, "h", false, now, &[], &want(&genome));
        assert_eq!(
            got[0].next.as_deref(),
            Some("b4 (genome, 1 x 10de:1eb8, 2026-12-01T07:00:00Z to 2026-12-02T00:00:00Z)")
        );
        assert!(uncovered(
            &b,
            "h",
            false,
            t("2026-12-01T07:00:00Z"),
            &[],
            &want(&genome)
        )
        .is_empty());
        assert_eq!(
            uncovered(
                &b,
                "h",
                false,
                t("2026-12-02T00:00:00Z"),
                &[],
                &want(&genome)
            )
            .len(),
            1,
            "end is exclusive"
        );
    }

    #[test]
    fn the_hooks_view_keeps_only_the_named_projects_bookings() {
        let all = parse(FILE).expect("parse");
        let mine = parse_matching(FILE, &["genome", "genome-id"]).expect("parse");
        assert_eq!(mine.len(), 1);
        assert_eq!(mine, vec![all[3].clone()]);
        // "p" is no prefix match: it must be a whole JSON string.
        assert!(parse_matching(FILE, &["p"]).expect("parse").is_empty());
    }

    #[test]
    fn broken_files_name_the_booking_or_the_line() {
        let e = parse("{\"bookings\": [\n{\"id\": 1}]}").expect_err("bad id");
        assert_eq!(
            e,
            "line 2: booking 1: invalid type: integer `1`, expected a string"
        );
        let e = parse("{\"bookings\": [\n{\"id\": \"x\"},]}").expect_err("syntax");
        assert!(e.starts_with("line 2, column"), "{e}");
        // The hook's view checks the whole document's JSON too, not only its project's.
        let e = parse_matching(
            "{\"bookings\": [\n{\"id\": \"x\", \"project\": \"q\"\n",
            &["p"],
        )
        .expect_err("truncated");
        assert!(e.starts_with("line 3, column"), "{e}");
        let e = parse(r#"{"bookings": [{"id": "x", "project": "p", "start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}]}"#).expect_err("order");
        assert_eq!(e, "booking 1 (\"x\"): end is not after start");
        let e = parse(r#"{"bookings": [{"id": "x", "project": "p", "model": "nvidia", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}]}"#).expect_err("model");
        assert!(e.contains("is not VENDOR:DEVICE"), "{e}");
    }

    /// Who else's running VMs use up the project's booking: the same project (by id or
    /// by name), and with `match_user` the same user (by id or by name); never the
    /// domain itself (libvirt's status file of the domain being started).
    #[test]
    fn running_vms_use_their_owners_bookings_only() {
        let b = parse(r#"{"bookings": [{"id": "m", "project": "climate", "model": "10de:1eb8", "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}]}"#).expect("parse");
        let now = t("2026-11-10T00:00:00Z");
        let mine = [gpu("0000:3b:00.0", "1eb8")];
        let theirs = [gpu("0000:af:00.0", "1eb8")];
        let alice = nova("climate", "alice");
        let want = Holder {
            name: "vm-new",
            nova: &alice,
            gpus: &mine,
        };
        let only = |project: Option<&str>,
                    project_id: Option<&str>,
                    user: Option<&str>,
                    user_id: Option<&str>| NovaInstance {
            project: project.map(str::to_owned),
            project_id: project_id.map(str::to_owned),
            user: user.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            ..NovaInstance::default()
        };
        let cases = [
            (
                "another project",
                "vm-r",
                nova("genome", "alice"),
                false,
                true,
            ),
            (
                "the project by id only",
                "vm-r",
                only(None, Some("climate-id"), None, None),
                false,
                false,
            ),
            (
                "the project by name only",
                "vm-r",
                only(Some("climate"), None, None, None),
                false,
                false,
            ),
            (
                "no project at all",
                "vm-r",
                only(None, None, Some("alice"), Some("alice-id")),
                false,
                true,
            ),
            (
                "another user, users not matched",
                "vm-r",
                nova("climate", "bob"),
                false,
                false,
            ),
            (
                "another user, users matched",
                "vm-r",
                nova("climate", "bob"),
                true,
                true,
            ),
            (
                "the user by id only",
                "vm-r",
                only(Some("climate"), None, None, Some("alice-id")),
                true,
                false,
            ),
            (
                "the user by name only",
                "vm-r",
                only(Some("climate"), None, Some("alice"), None),
                true,
                false,
            ),
            (
                "the domain itself",
                "vm-new",
                nova("climate", "alice"),
                false,
                true,
            ),
        ];
        for (what, name, owner, match_user, covered) in cases {
            let running = [Holder {
                name,
                nova: &owner,
                gpus: &theirs,
            }];
            let got = uncovered(&b, "h", match_user, now, &running, &want);
            let expected = if covered {
                vec![]
            } else {
                vec![Uncovered {
                    gpu: mine[0].clone(),
                    why: "the project's bookings that cover now are used up by its running VMs"
                        .into(),
                    next: None,
                }]
            };
            assert_eq!(got, expected, "{what}");
        }
    }

    /// The next booking is one that starts after now: one that starts now is in use.
    #[test]
    fn a_booking_used_up_from_now_is_not_the_next_one() {
        let b = parse(r#"{"bookings": [
          {"id": "now", "project": "climate", "model": "10de:1eb8", "start": "2026-11-10T00:00:00Z", "end": "2026-11-11T00:00:00Z"},
          {"id": "later", "project": "climate", "model": "10de:1eb8", "start": "2026-11-12T00:00:00Z", "end": "2026-11-13T00:00:00Z"}
        ]}"#)
        .expect("parse");
        let alice = nova("climate", "alice");
        let t4s = [gpu("0000:3b:00.0", "1eb8"), gpu("0000:af:00.0", "1eb8")];
        let want = Holder {
            name: "v",
            nova: &alice,
            gpus: &t4s,
        };
        let got = uncovered(&b, "h", false, t("2026-11-10T00:00:00Z"), &[], &want);
        assert_eq!(
            got,
            vec![Uncovered {
                gpu: t4s[1].clone(),
                why: "the project's bookings that cover now are used up by its running VMs".into(),
                next: Some(
                    "later (climate, 1 x 10de:1eb8, 2026-11-12T00:00:00Z to 2026-11-13T00:00:00Z)"
                        .into()
                ),
            }]
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        std::fs::write(&path, FILE).expect("write");
        assert_eq!(load(&path).expect("load"), parse(FILE).expect("parse"));
        assert_eq!(
            load_matching(&path, &["genome"], None).expect("load"),
            vec![parse(FILE).expect("parse")[3].clone()]
        );
        let missing = dir.path().join("none.json");
        for e in [
            load(&missing).expect_err("missing"),
            load_matching(&missing, &["genome"], None).expect_err("missing"),
        ] {
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: cannot read it: No such file or directory (os error 2)",
                    missing.display()
                )
            );
        }
        std::fs::write(&path, "{\"bookings\": 1}").expect("write");
        assert_eq!(
            load(&path).expect_err("bad").to_string(),
            format!("{}: line 1, column 14: invalid type: integer `1`, expected a sequence; expected {{\"bookings\": [{{\"id\", \"project\", \"start\", \"end\", ...}}]}}", path.display())
        );
    }

    #[test]
    fn a_name_outside_every_booking_selects_none() {
        // "bookings" is the document's key, not a booking's value.
        assert_eq!(parse_matching(FILE, &["bookings"]).expect("parse"), vec![]);
    }

    #[test]
    fn a_model_is_four_hex_digits_a_colon_and_four() {
        for (model, ok) in [
            ("10de:1eb8", true),
            ("10DE:1EB8", true),
            ("10de:1eb", false),
            ("10d:1eb8", false),
            ("10de1eb8", false),
            ("10de:1eg8", false),
            ("0x10:1eb8", false),
        ] {
            let text = format!(
                r#"{{"bookings": [{{"id": "x", "project": "p", "model": "{model}", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}}]}}"#
            );
            match parse(&text) {
                Ok(b) => {
                    assert!(ok, "{model} was taken");
                    assert_eq!(b[0].target, Target::Model(0x10de, 0x1eb8));
                }
                Err(e) => {
                    assert!(!ok, "{model}: {e}");
                    assert_eq!(
                        e,
                        format!("booking 1 (\"x\"): model {model:?} is not VENDOR:DEVICE in hex")
                    );
                }
            }
        }
    }
}
