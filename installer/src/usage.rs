//! `usage`: GPU-hours per project, user, flavor, model, instance or GPU, from the
//! ledger, as a table, JSON or CSV.

use std::fmt::Write;
use std::path::Path;

use clap::builder::TypedValueParser;

use anyhow::{bail, Context, Result};
use host_model::ledger::{self, Key, UsageRow};
use jiff::{civil::Date, tz::TimeZone, Timestamp};

/// `--by KEY`: the keys host-model knows, listed in `--help`.
pub fn key_parser() -> impl clap::builder::TypedValueParser<Value = Key> {
    clap::builder::PossibleValuesParser::new(Key::ALL.map(Key::name))
        .map(|name: String| Key::named(&name).expect("clap admits only the listed names"))
}

/// `--since`/`--until`: RFC 3339 (any offset), or YYYY-MM-DD for midnight UTC.
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    s.parse::<Date>()
        .ok()
        .and_then(|d| d.to_zoned_datetime(TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!(
                "{s:?} is not a time: give RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)"
            )
        })
}

/// The first instant of `now`'s month, UTC.
pub fn month_start(now: Timestamp) -> Timestamp {
    let date = now.to_zoned_datetime(TimeZone::UTC).date();
    Date::new(date.year(), date.month(), 1)
        .and_then(|d| d.to_zoned_datetime(TimeZone::UTC))
        .map(|z| z.timestamp())
        .expect("the first of a month exists")
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Read the ledger at `path` and report. Lines that are not records are warnings on
/// stderr, and the report goes on without them.
pub fn report(
    path: &Path,
    by: &[Key],
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    format: Format,
) -> Result<String> {
    let now = Timestamp::now();
    let since = since.unwrap_or_else(|| month_start(now));
    let until = until.unwrap_or(now);
    if until <= since {
        bail!("--until ({until}) must come after --since ({since})");
    }
    let keys: Vec<Key> = if by.is_empty() {
        vec![Key::Project]
    } else {
        by.to_vec()
    };
    let mut tally = ledger::Tally::new(&keys, since, until, now);
    let problems = ledger::read_into(path, &mut tally)
        .with_context(|| format!("cannot read the ledger {}", path.display()))?;
    for p in &problems {
        eprintln!("gpu-passthrough: warning: {p}");
    }
    // A VM that started at the window's very end has a row of 0 hours: not worth a line.
    let rows: Vec<UsageRow> = tally
        .rows()
        .into_iter()
        .filter(|r| r.gpu_hours > 0.0 || r.refusals > 0)
        .collect();
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&json_rows(&rows))? + "\n",
        Format::Csv => csv(&rows, &keys),
        Format::Table => table(&rows, &keys, since, until),
    })
}

fn json_rows(rows: &[UsageRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for (k, v) in &r.fields {
                o.insert((*k).to_owned(), v.clone().into());
            }
            o.insert("gpu_hours".into(), round(r.gpu_hours).into());
            o.insert("refusals".into(), r.refusals.into());
            o.insert(
                "refusals_by_check".into(),
                serde_json::to_value(&r.refusals_by_check).expect("a map of counts"),
            );
            serde_json::Value::Object(o)
        })
        .collect()
}

/// Hours to the microhour (3.6 ms): the ledger is to the second.
fn round(hours: f64) -> f64 {
    (hours * 1e6).round() / 1e6
}

fn field_names(keys: &[Key]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for k in keys {
        for f in k.fields() {
            if !names.contains(f) {
                names.push(f);
            }
        }
    }
    names
}

fn csv_cell(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// CSV with a header line; `refusals_by_check` as `check=N;check=N`.
fn csv(rows: &[UsageRow], keys: &[Key]) -> String {
    let mut out = String::new();
    let mut header = field_names(keys);
    header.extend(["gpu_hours", "refusals", "refusals_by_check"]);
    out.push_str(&header.join(","));
    out.push('\n');
    for r in rows {
        let mut cells: Vec<String> = r
            .fields
            .iter()
            .map(|(_, v)| csv_cell(v.as_deref().unwrap_or("")))
            .collect();
        cells.push(format!("{}", round(r.gpu_hours)));
        cells.push(r.refusals.to_string());
        cells.push(csv_cell(
            &r.refusals_by_check
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(";"),
        ));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn table(rows: &[UsageRow], keys: &[Key], since: Timestamp, until: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "GPU-hours from {} to {}",
        ledger::format_ts(since),
        ledger::format_ts(until)
    );
    if rows.is_empty() {
        out.push_str("no GPU use and no refusals in this window\n");
        return out;
    }
    let mut header: Vec<String> = field_names(keys).iter().map(|f| f.to_uppercase()).collect();
    header.extend(["GPU_HOURS".into(), "REFUSALS".into()]);
    let mut lines: Vec<Vec<String>> = vec![header];
    for r in rows {
        let mut cells: Vec<String> = r
            .fields
            .iter()
            .map(|(_, v)| v.clone().unwrap_or_else(|| "-".into()))
            .collect();
        cells.push(format!("{:.2}", r.gpu_hours));
        cells.push(if r.refusals_by_check.is_empty() {
            r.refusals.to_string()
        } else {
            format!(
                "{} ({})",
                r.refusals,
                r.refusals_by_check
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-01").expect("date").to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(
            parse_time("2026-11-01T01:00:00+01:00")
                .expect("offset")
                .to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            month_start("2026-11-26T15:00:00Z".parse().expect("ts")).to_string(),
            "2026-11-01T00:00:00Z"
        );
    }
}
