//! `bookings import FILE.ics`: an iCalendar (RFC 5545) export as bookings.
//!
//! Each VEVENT is a booking, each occurrence of a recurring one a booking of its own:
//!
//! | booking    | VEVENT |
//! |------------|--------|
//! | `id`       | `UID`; an occurrence of a recurring event: `UID/START` (UTC) |
//! | `project`  | `X-GPU-PROJECT` (required) |
//! | `user`     | `X-GPU-USER` |
//! | `host`     | `X-GPU-HOST` |
//! | `gpu`      | `X-GPU-ADDRESS` (a PCI address) |
//! | `model`    | `X-GPU-MODEL` (`vendor:device`) |
//! | `count`    | `X-GPU-COUNT` |
//! | `start`    | `DTSTART` |
//! | `end`      | `DTEND`, else `DTSTART` + `DURATION`, else the end of an all-day `DTSTART` |
//!
//! Times: UTC (`...Z`), or local in `TZID` (an IANA name, else the `X-LIC-LOCATION` of
//! its VTIMEZONE, else the IANA name at the end of a `/vendor/.../Europe/Berlin` TZID);
//! floating times and all-day dates are local in the calendar's `X-WR-TIMEZONE`.
//! A local time that occurs twice is the first; one in a gap is read with the offset
//! before the gap (RFC 5545, 3.3.5). Recurrence: `RRULE`, `RDATE`, `EXDATE`, and
//! `RECURRENCE-ID` overrides (each its own booking; its `X-GPU-*` default to the
//! series'). `STATUS:CANCELLED` events and occurrences are left out, as are
//! occurrences that ended more than 31 days before the import or start a year or more
//! after it.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use host_model::bookings::Entry;
use icalendar::parser::{Component, Property};
use rrule::{RRule, Tz, Unvalidated};

/// How far back and ahead occurrences of recurring events are kept.
const KEEP_ENDED_DAYS: u64 = 31;

/// The bookings of the calendar `text`, at time `now`, in calendar order.
pub fn bookings(text: &str, now: DateTime<Utc>) -> Result<Vec<Entry>> {
    let unfolded = icalendar::parser::unfold(text);
    let calendar = icalendar::parser::read_calendar(&unfolded)
        .map_err(|e| anyhow!("not an iCalendar (RFC 5545) file: {e}"))?;
    if calendar.properties.is_empty() && calendar.components.is_empty() {
        bail!("not an iCalendar (RFC 5545) file: it holds no BEGIN:VCALENDAR");
    }
    let mut zones = Zones {
        default: None,
        locations: BTreeMap::new(),
    };
    for c in calendar
        .components
        .iter()
        .filter(|c| is(&c.name, "VTIMEZONE"))
    {
        if let (Some(id), Some(location)) = (prop(c, "TZID"), prop(c, "X-LIC-LOCATION")) {
            zones.locations.insert(id.to_owned(), location.to_owned());
        }
    }
    if let Some(p) = calendar
        .properties
        .iter()
        .find(|p| is(&p.name, "X-WR-TIMEZONE"))
    {
        zones.default = Some(
            zones
                .resolve(p.val.as_str())
                .with_context(|| "the calendar's X-WR-TIMEZONE")?,
        );
    }
    let window = Window {
        from: now - chrono::Duration::days(KEEP_ENDED_DAYS as i64),
        until: now
            .checked_add_months(chrono::Months::new(12))
            .ok_or_else(|| anyhow!("the time {now} plus a year"))?,
    };

    // Events by UID: the series (or single event), then its overrides.
    let mut order: Vec<String> = Vec::new();
    let mut series: BTreeMap<String, (Option<&Component<'_>>, Vec<&Component<'_>>)> =
        BTreeMap::new();
    for event in calendar.components.iter().filter(|c| is(&c.name, "VEVENT")) {
        let uid = prop(event, "UID")
            .ok_or_else(|| anyhow!("a VEVENT has no UID ({})", summary(event)))?;
        let slot = series.entry(uid.to_owned()).or_insert_with(|| {
            order.push(uid.to_owned());
            (None, Vec::new())
        });
        if find(event, "RECURRENCE-ID").is_some() {
            slot.1.push(event);
        } else if slot.0.replace(event).is_some() {
            bail!("two VEVENTs have UID {uid:?} and neither is a RECURRENCE-ID override");
        }
    }
    let mut out = Vec::new();
    for uid in order {
        let (master, overrides) = &series[&uid];
        let at = |e: &str| format!("event {uid:?}: {e}");
        let mut replaced = Vec::new();
        for o in overrides {
            let rid = find(o, "RECURRENCE-ID").expect("filtered on RECURRENCE-ID");
            if param(rid, "RANGE").is_some_and(|r| r.eq_ignore_ascii_case("THISANDFUTURE")) {
                bail!(at(
                    "RANGE=THISANDFUTURE overrides are not read; export the calendar \
                          with the series split at that date"
                ));
            }
            let rid_at = zones
                .instant(rid)
                .map_err(|e| anyhow!(at(&format!("RECURRENCE-ID: {e}"))))?;
            replaced.push(rid_at.with_timezone(&Utc));
            if cancelled(o) {
                continue;
            }
            let (start, end) = zones
                .span(o)
                .map_err(|e| anyhow!(at(&format!("override {rid_at}: {e}"))))?;
            let (start, end) = (start.with_timezone(&Utc), end.with_timezone(&Utc));
            if window.keeps(start, end) {
                let id = format!("{uid}/{}", utc(rid_at.with_timezone(&Utc)));
                out.push(entry(o, *master, id, start, end).map_err(|e| anyhow!(at(&e)))?);
            }
        }
        let Some(event) = master else {
            continue; // overrides of a series this export does not hold
        };
        if cancelled(event) {
            continue;
        }
        let (dtstart, dtend) = zones.span(event).map_err(|e| anyhow!(at(&e)))?;
        let (start, end) = (dtstart.with_timezone(&Utc), dtend.with_timezone(&Utc));
        if find(event, "RRULE").is_none() && find(event, "RDATE").is_none() {
            if window.keeps(start, end) {
                out.push(entry(event, None, uid.clone(), start, end).map_err(|e| anyhow!(at(&e)))?);
            }
            continue;
        }
        for occurrence in zones
            .occurrences(event, dtstart, &window, end - start)
            .map_err(|e| anyhow!(at(&e)))?
        {
            let o_start = occurrence.with_timezone(&Utc);
            if replaced.contains(&o_start) {
                continue;
            }
            let o_end = o_start + (end - start);
            if window.keeps(o_start, o_end) {
                let id = format!("{uid}/{}", utc(o_start));
                out.push(entry(event, None, id, o_start, o_end).map_err(|e| anyhow!(at(&e)))?);
            }
        }
    }
    out.sort_by(|a, b| (&a.start, &a.id).cmp(&(&b.start, &b.id)));
    Ok(out)
}

/// Which occurrences are kept.
struct Window {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Window {
    fn keeps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        end > self.from && start < self.until
    }
}

/// The calendar's time zones.
struct Zones {
    /// `X-WR-TIMEZONE`: floating times and all-day dates.
    default: Option<chrono_tz::Tz>,
    /// VTIMEZONE `TZID` -> its `X-LIC-LOCATION`.
    locations: BTreeMap<String, String>,
}

impl Zones {
    fn resolve(&self, tzid: &str) -> Result<chrono_tz::Tz> {
        let tzid = tzid.trim_matches('"');
        let mut tries = vec![tzid];
        if let Some(l) = self.locations.get(tzid) {
            tries.push(l);
        }
        // "/mozilla.org/20050126_1/Europe/Berlin", "/citadel.org/.../America/New_York"
        tries.extend(tzid.match_indices('/').map(|(i, _)| &tzid[i + 1..]));
        tries
            .iter()
            .find_map(|t| chrono_tz::Tz::from_str(t).ok())
            .ok_or_else(|| {
                anyhow!(
                    "TZID {tzid:?} is not an IANA time zone name; export the calendar with IANA \
                     names (Europe/Berlin), or give its VTIMEZONE an X-LIC-LOCATION"
                )
            })
    }

    /// A DATE or DATE-TIME property's value as an instant, in the zone it names.
    fn instant(&self, p: &Property<'_>) -> Result<DateTime<Tz>> {
        Ok(self
            .instants(p)?
            .into_iter()
            .next()
            .expect("one value at least"))
    }

    /// Every value of a (comma-separated) DATE or DATE-TIME property.
    fn instants(&self, p: &Property<'_>) -> Result<Vec<DateTime<Tz>>> {
        let value = p.val.as_str().trim();
        let date_only = param(p, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
        let zone = match param(p, "TZID") {
            Some(id) => Some(self.resolve(id)?),
            None => None,
        };
        value
            .split(',')
            .map(|v| self.one_instant(v.trim(), date_only, zone))
            .collect()
    }

    fn one_instant(
        &self,
        v: &str,
        date_only: bool,
        zone: Option<chrono_tz::Tz>,
    ) -> Result<DateTime<Tz>> {
        if let Some(utc) = v.strip_suffix('Z') {
            let t = NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S")
                .map_err(|_| anyhow!("{v:?} is not a DATE-TIME (YYYYMMDDTHHMMSSZ)"))?;
            return Ok(Tz::UTC.from_utc_datetime(&t));
        }
        let local = if date_only || v.len() == 8 {
            NaiveDate::parse_from_str(v, "%Y%m%d")
                .map_err(|_| anyhow!("{v:?} is not a DATE (YYYYMMDD)"))?
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
        } else {
            NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S")
                .map_err(|_| anyhow!("{v:?} is not a DATE-TIME (YYYYMMDDTHHMMSS)"))?
        };
        let zone = zone.or(self.default).ok_or_else(|| {
            anyhow!(
                "{v:?} is a floating time (no Z, no TZID) and the calendar has no \
                 X-WR-TIMEZONE: give the time zone"
            )
        })?;
        Ok(local_time(zone, local))
    }

    /// An event's start (in its zone, as recurrence needs it) and end.
    fn span(&self, e: &Component<'_>) -> Result<(DateTime<Tz>, DateTime<Tz>), String> {
        let start_p = find(e, "DTSTART").ok_or("it has no DTSTART")?;
        let start = self.instant(start_p).map_err(|x| format!("DTSTART: {x}"))?;
        let all_day = param(start_p, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE"))
            || start_p.val.as_str().trim().len() == 8;
        let end = if let Some(p) = find(e, "DTEND") {
            self.instant(p).map_err(|x| format!("DTEND: {x}"))?
        } else if let Some(p) = find(e, "DURATION") {
            add_duration(start, p.val.as_str().trim()).map_err(|x| format!("DURATION: {x}"))?
        } else if all_day {
            start
                .checked_add_days(Days::new(1))
                .ok_or("DTSTART plus a day")?
        } else {
            return Err("it has neither DTEND nor DURATION: a booking needs an end".into());
        };
        if end <= start {
            return Err(format!("it ends ({end}) before it starts ({start})"));
        }
        Ok((start, end))
    }

    /// The starts of a recurring event's occurrences that may fall in `window`.
    fn occurrences(
        &self,
        e: &Component<'_>,
        dtstart: DateTime<Tz>,
        window: &Window,
        length: chrono::Duration,
    ) -> Result<Vec<DateTime<Tz>>, String> {
        let mut set = rrule::RRuleSet::new(dtstart);
        for p in e.properties.iter().filter(|p| is(&p.name, "RRULE")) {
            let rule: RRule<Unvalidated> = p
                .val
                .as_str()
                .parse()
                .map_err(|x| format!("RRULE {:?}: {x}", p.val.as_str()))?;
            let rule = rule
                .validate(dtstart)
                .map_err(|x| format!("RRULE {:?}: {x}", p.val.as_str()))?;
            set = set.rrule(rule);
        }
        for p in e.properties.iter().filter(|p| is(&p.name, "RDATE")) {
            for at in self.instants(p).map_err(|x| format!("RDATE: {x}"))? {
                set = set.rdate(at);
            }
        }
        for p in e.properties.iter().filter(|p| is(&p.name, "EXDATE")) {
            for at in self.instants(p).map_err(|x| format!("EXDATE: {x}"))? {
                set = set.exdate(at);
            }
        }
        let from = (window.from - length).with_timezone(&Tz::UTC);
        let until = window.until.with_timezone(&Tz::UTC);
        let result = set.after(from).before(until).all(u16::MAX);
        if result.limited && result.dates.len() == usize::from(u16::MAX) {
            return Err(format!(
                "it recurs more than {} times within the year ahead",
                u16::MAX
            ));
        }
        Ok(result.dates)
    }
}

/// A local time in `zone`: the first of two, or in a gap with the offset before it.
fn local_time(zone: chrono_tz::Tz, local: NaiveDateTime) -> DateTime<Tz> {
    let zone = Tz::Tz(zone);
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => t,
        chrono::LocalResult::Ambiguous(first, _) => first,
        chrono::LocalResult::None => {
            let before = zone
                .offset_from_utc_datetime(&(local - chrono::Duration::hours(24)))
                .fix();
            zone.from_utc_datetime(&(local - before))
        }
    }
}

/// `start` + an RFC 5545 DURATION: weeks and days in local days, the rest exactly.
fn add_duration(start: DateTime<Tz>, d: &str) -> Result<DateTime<Tz>> {
    let bad = || anyhow!("{d:?} is not a duration (P1W, P2D, PT4H30M, P1DT12H)");
    let (negative, rest) = match d.as_bytes().first() {
        Some(b'-') => (true, &d[1..]),
        Some(b'+') => (false, &d[1..]),
        _ => (false, d),
    };
    if negative {
        bail!("{d:?}: a negative duration cannot end a booking");
    }
    let rest = rest.strip_prefix('P').ok_or_else(bad)?;
    let (days_part, time_part) = rest.split_once('T').unwrap_or((rest, ""));
    let (mut days, mut seconds) = (0u64, 0i64);
    let mut number = String::new();
    for c in days_part.chars() {
        match c {
            '0'..='9' => number.push(c),
            'W' | 'D' => {
                let n: u64 = number.parse().map_err(|_| bad())?;
                days += if c == 'W' { n * 7 } else { n };
                number.clear();
            }
            _ => return Err(bad()),
        }
    }
    for c in time_part.chars() {
        match c {
            '0'..='9' => number.push(c),
            'H' | 'M' | 'S' => {
                let n: i64 = number.parse().map_err(|_| bad())?;
                seconds += n * match c {
                    'H' => 3600,
                    'M' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !number.is_empty() || (days_part.is_empty() && time_part.is_empty()) {
        return Err(bad());
    }
    let t = start.checked_add_days(Days::new(days)).ok_or_else(bad)?;
    Ok(t + chrono::Duration::seconds(seconds))
}

fn entry(
    e: &Component<'_>,
    series: Option<&Component<'_>>,
    id: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Entry, String> {
    let field = |name: &str| {
        text_prop(e, name)
            .or_else(|| series.and_then(|s| text_prop(s, name)))
            .filter(|v| !v.is_empty())
    };
    let project = field("X-GPU-PROJECT")
        .ok_or("it has no X-GPU-PROJECT: say whose booking it is (Nova's project name or id)")?;
    let count = match field("X-GPU-COUNT") {
        Some(c) => c
            .parse()
            .map_err(|_| format!("X-GPU-COUNT {c:?} is not a whole number"))?,
        None => 1,
    };
    Ok(Entry {
        id,
        project,
        user: field("X-GPU-USER"),
        host: field("X-GPU-HOST"),
        gpu: field("X-GPU-ADDRESS"),
        model: field("X-GPU-MODEL"),
        count,
        start: utc(start),
        end: utc(end),
    })
}

fn utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn is(name: &icalendar::parser::ParseString<'_>, want: &str) -> bool {
    name.as_str().eq_ignore_ascii_case(want)
}

fn find<'c, 'a>(c: &'c Component<'a>, name: &str) -> Option<&'c Property<'a>> {
    c.properties.iter().find(|p| is(&p.name, name))
}

fn prop<'c>(c: &'c Component<'_>, name: &str) -> Option<&'c str> {
    find(c, name).map(|p| p.val.as_str().trim())
}

/// A TEXT property, its escapes (`\,` `\;` `\n` `\\`) undone.
fn text_prop(c: &Component<'_>, name: &str) -> Option<String> {
    find(c, name).map(|p| p.val.clone().unescape_text().as_str().trim().to_owned())
}

fn param<'p>(p: &'p Property<'_>, key: &str) -> Option<&'p str> {
    p.params
        .iter()
        .find(|x| x.key.as_str().eq_ignore_ascii_case(key))
        .and_then(|x| x.val.as_ref())
        .map(|v| v.as_str())
}

fn cancelled(e: &Component<'_>) -> bool {
    prop(e, "STATUS").is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
}

fn summary(e: &Component<'_>) -> String {
    prop(e, "SUMMARY")
        .map(|s| format!("SUMMARY {s:?}"))
        .unwrap_or_else(|| "no SUMMARY".into())
}
