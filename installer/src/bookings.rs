//! `bookings list|violations|import`: what the site booked for this host, who runs a
//! GPU without a booking, and writing the bookings file from an export.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use host_model::bookings::{self, Booking, Holder};
use host_model::domain::Domain;
use host_model::ledger::{self, Event, GpuRef};
use jiff::Timestamp;
use serde::Serialize;

use crate::files::write_atomic;

/// Read and check the whole bookings file, and write the hook's index of it
/// (`STATE/bookings.index`, see [`bookings::index`]) when the index there differs (the
/// file changed since). An index that cannot be written is a warning: the hook then
/// checks the whole file at each GPU start, slower but the same answer.
pub fn load_and_index(file: &Path, state_dir: &Path) -> Result<Vec<Booking>> {
    let (index, all) = bookings::index::build(file)?;
    let index_path = state_dir.join(bookings::index::INDEX_FILE);
    if std::fs::read(&index_path).ok().as_deref() != Some(index.as_slice()) {
        let written = std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))
            .and_then(|()| Ok(write_atomic(&index_path, &index, 0o644)?));
        if let Err(e) = written {
            eprintln!(
                "gpu-passthrough: warning: cannot write the bookings index {} ({e:#}); the hook \
                 reads the whole bookings file at each GPU start until it is written",
                index_path.display()
            );
        }
    }
    Ok(all)
}

/// The bookings that apply on this host and have not ended, soonest first.
pub fn list<'a>(all: &'a [Booking], hostname: &str, now: Timestamp) -> Vec<&'a Booking> {
    let mut out: Vec<&Booking> = all
        .iter()
        .filter(|b| b.applies_on(hostname) && b.end > now)
        .collect();
    out.sort_by_key(|b| (b.start, b.entry.id.clone()));
    out
}

#[derive(Debug, Serialize)]
pub struct ListRow<'a> {
    #[serde(flatten)]
    pub entry: &'a bookings::Entry,
    /// `now` or `upcoming`.
    pub status: &'static str,
}

pub fn list_rows<'a>(list: &[&'a Booking], now: Timestamp) -> Vec<ListRow<'a>> {
    list.iter()
        .map(|b| ListRow {
            entry: &b.entry,
            status: if b.covers(now) { "now" } else { "upcoming" },
        })
        .collect()
}

pub fn list_table(rows: &[ListRow<'_>]) -> String {
    if rows.is_empty() {
        return "no bookings apply to this host now or later\n".into();
    }
    let mut out = String::from("STATUS    ID              PROJECT          USER         GPU/MODEL       COUNT  START                 END\n");
    for r in rows {
        let e = r.entry;
        out.push_str(&format!(
            "{:<9} {:<15} {:<16} {:<12} {:<15} {:>5}  {:<21} {}\n",
            r.status,
            e.id,
            e.project,
            e.user.as_deref().unwrap_or("-"),
            e.gpu.as_deref().or(e.model.as_deref()).unwrap_or("any"),
            if e.gpu.is_some() { 1 } else { e.count },
            e.start,
            e.end
        ));
    }
    out
}

/// A running GPU domain that no booking covers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    pub domain: String,
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub user_name: Option<String>,
    /// The GPUs no booking covers.
    pub gpus: Vec<String>,
    /// Its `start` in the ledger.
    pub since: Option<String>,
    /// When the project's last booking for those GPUs ended, if one did.
    pub booking_ended: Option<String>,
}

/// The running GPU domains with Nova's metadata that no booking covers now. Domains
/// use bookings in the order they started (the ledger's), so a count-1 booking covers
/// the first of two VMs and the second is the violation.
pub fn violations(
    all: &[Booking],
    hostname: &str,
    match_user: bool,
    now: Timestamp,
    running: &[Domain],
    sysfs: &Path,
    usage_dir: &Path,
) -> Result<Vec<Violation>> {
    // When each running domain started, from the ledger.
    let mut since: BTreeMap<String, Timestamp> = BTreeMap::new();
    let (records, _) = ledger::read(usage_dir)
        .with_context(|| format!("cannot read the ledger {}", usage_dir.display()))?;
    for r in records
        .iter()
        .filter(|r| matches!(r.event, Event::Start | Event::Running))
    {
        if let (Some(at), Some(uuid)) = (r.time(), &r.domain_uuid) {
            since.entry(uuid.clone()).or_insert(at);
        }
    }
    let mut domains: Vec<(&Domain, Vec<GpuRef>, Option<Timestamp>)> = running
        .iter()
        .filter(|d| d.nova.is_some())
        .map(|d| {
            let started = d.uuid.as_ref().and_then(|u| since.get(u)).copied();
            (d, ledger::gpus_of(d, sysfs, None), started)
        })
        .filter(|(_, g, _)| !g.is_empty())
        .collect();
    domains.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.name.cmp(&b.0.name)));
    let mut out = Vec::new();
    for (i, (d, gpus, started)) in domains.iter().enumerate() {
        let nova = d.nova.as_ref().expect("filtered on Nova metadata");
        let earlier: Vec<Holder<'_>> = domains[..i]
            .iter()
            .map(|(o, g, _)| Holder {
                name: &o.name,
                nova: o.nova.as_ref().expect("filtered on Nova metadata"),
                gpus: g,
            })
            .collect();
        let want = Holder {
            name: &d.name,
            nova,
            gpus,
        };
        let uncovered = bookings::uncovered(all, hostname, match_user, now, &earlier, &want);
        if uncovered.is_empty() {
            continue;
        }
        let ended = all
            .iter()
            .filter(|b| {
                b.applies_on(hostname)
                    && b.belongs_to(nova, match_user)
                    && b.end <= now
                    && uncovered.iter().any(|u| b.fits(&u.gpu))
            })
            .map(|b| b.end)
            .max();
        out.push(Violation {
            domain: d.name.clone(),
            instance_id: d.uuid.clone(),
            instance_name: nova.name.clone(),
            project_id: nova.project_id.clone(),
            project_name: nova.project.clone(),
            user_name: nova.user.clone(),
            gpus: uncovered.iter().map(|u| u.gpu.address.clone()).collect(),
            since: started.map(ledger::format_ts),
            booking_ended: ended.map(ledger::format_ts),
        });
    }
    Ok(out)
}

pub fn violations_table(v: &[Violation]) -> String {
    if v.is_empty() {
        return "no running GPU VM is without a booking\n".into();
    }
    let mut out = String::new();
    for x in v {
        out.push_str(&format!(
            "{} ({}, project {}, user {}): GPU {} without a booking since {}{}\n",
            x.domain,
            x.instance_name.as_deref().unwrap_or("-"),
            x.project_name
                .as_deref()
                .or(x.project_id.as_deref())
                .unwrap_or("-"),
            x.user_name.as_deref().unwrap_or("-"),
            x.gpus.join(", "),
            x.since
                .as_deref()
                .unwrap_or("its start (not in the ledger)"),
            x.booking_ended
                .as_deref()
                .map(|e| format!("; its booking ended {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// The bookings file that `source` makes (JSON in the file's own format, or an
/// iCalendar export: see [`crate::ical`]), every booking checked, and how many it holds.
/// `now` bounds the expansion of recurring events.
pub fn convert(source: &Path, now: Timestamp) -> Result<(String, usize)> {
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let is_ics = source
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("ics"))
        || text.trim_start().starts_with("BEGIN:VCALENDAR");
    let text = if is_ics {
        let now = chrono::DateTime::from_timestamp(now.as_second(), 0)
            .ok_or_else(|| anyhow::anyhow!("the time {now} is out of range"))?;
        let entries = crate::ical::bookings(&text, now)
            .with_context(|| format!("{}: nothing was written", source.display()))?;
        let mut json = serde_json::to_string_pretty(&serde_json::json!({ "bookings": entries }))?;
        json.push('\n');
        json
    } else {
        text
    };
    let checked = bookings::parse(&text).map_err(|e| {
        let how = if is_ics {
            " (of the bookings its events make: see the README's mapping); nothing was written"
        } else {
            "; nothing was written"
        };
        anyhow::anyhow!("{}: {e}{how}", source.display())
    })?;
    Ok((text, checked.len()))
}

/// Replace the bookings file with `text` (from [`convert`]) atomically, and index it: a
/// calendar export is the whole truth.
pub fn install(text: &str, target: &Path, state_dir: &Path) -> Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(target, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", target.display()))?;
    load_and_index(target, state_dir)?;
    Ok(())
}
