//! GPU time from the ledger's records: intervals summed by key (project, user, flavor,
//! model, instance, GPU), with the refusals beside them.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::*;

pub type Fields = Vec<(&'static str, Option<String>)>;

/// What `usage` groups GPU time by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Project,
    User,
    Flavor,
    Model,
    Instance,
    Gpu,
}

impl Key {
    /// Every key, in the order `--help` lists them.
    pub const ALL: [Key; 6] = [
        Key::Project,
        Key::User,
        Key::Flavor,
        Key::Model,
        Key::Instance,
        Key::Gpu,
    ];

    /// The key's name on the command line: `project`, `user`, ...
    pub fn name(self) -> &'static str {
        match self {
            Key::Project => "project",
            Key::User => "user",
            Key::Flavor => "flavor",
            Key::Model => "model",
            Key::Instance => "instance",
            Key::Gpu => "gpu",
        }
    }

    /// The key named `name` ([`Key::name`]).
    pub fn named(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The ledger fields a key brings into a row, as named in the ledger.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Key::Project => &["project_id", "project_name"],
            Key::User => &["user_id", "user_name"],
            Key::Flavor => &["flavor_name"],
            Key::Model => &["vendor_id", "device_id", "model"],
            Key::Instance => &["instance_id", "instance_name", "project_name"],
            Key::Gpu => &["address", "model"],
        }
    }

    /// Whether the key tells GPUs of one record apart.
    fn per_gpu(self) -> bool {
        matches!(self, Key::Model | Key::Gpu)
    }
}

/// One row of `usage`: the key fields (in order, without repeats) and the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub fields: Vec<(&'static str, Option<String>)>,
    pub gpu_hours: f64,
    pub refusals: u64,
    pub refusals_by_check: BTreeMap<String, u64>,
}

/// The key fields of `keys` for a record (and one of its GPUs).
fn key_fields(
    keys: &[Key],
    r: &Record,
    gpu: Option<&GpuRef>,
) -> Vec<(&'static str, Option<String>)> {
    let mut out: Vec<(&'static str, Option<String>)> = Vec::new();
    for key in keys {
        for field in key.fields() {
            if out.iter().any(|(f, _)| f == field) {
                continue;
            }
            let value = match *field {
                "project_id" => r.project_id.clone(),
                "project_name" => r.project_name.clone(),
                "user_id" => r.user_id.clone(),
                "user_name" => r.user_name.clone(),
                "flavor_name" => r.flavor_name.clone(),
                "instance_id" => r.instance_id.clone(),
                "instance_name" => r.instance_name.clone(),
                "vendor_id" => gpu.map(|g| g.vendor_id.clone()),
                "device_id" => gpu.map(|g| g.device_id.clone()),
                "model" => gpu.and_then(|g| g.model.clone()),
                "address" => gpu.map(|g| g.address.clone()),
                _ => None,
            };
            out.push((field, value));
        }
    }
    out
}

/// GPU-hours and refusals per key combination over a window, fed record by record in
/// time order (see [`read_each`]): intervals clipped to `[since, until)`, those still
/// open counted up to `now`, refusals in the window per check. Only open intervals are
/// kept, so a year of ledger passes through in little memory.
#[derive(Debug)]
pub struct Tally {
    keys: Vec<Key>,
    since: Timestamp,
    until: Timestamp,
    now: Timestamp,
    rows: BTreeMap<Fields, UsageRow>,
    open: HashMap<(String, String), (Timestamp, Record)>,
}

impl Tally {
    pub fn new(keys: &[Key], since: Timestamp, until: Timestamp, now: Timestamp) -> Self {
        Tally {
            keys: keys.to_vec(),
            since,
            until,
            now,
            rows: BTreeMap::new(),
            open: HashMap::new(),
        }
    }

    fn row(rows: &mut BTreeMap<Fields, UsageRow>, fields: Fields) -> &mut UsageRow {
        rows.entry(fields.clone()).or_insert_with(|| UsageRow {
            fields,
            gpu_hours: 0.0,
            refusals: 0,
            refusals_by_check: BTreeMap::new(),
        })
    }

    fn per_gpu(&self) -> bool {
        self.keys.iter().any(|k| k.per_gpu())
    }

    /// Add the GPU time of `r` from `start` to `end`, clipped to the window.
    fn add(
        rows: &mut BTreeMap<Fields, UsageRow>,
        tally: (&[Key], bool, Timestamp, Timestamp),
        start: Timestamp,
        end: Timestamp,
        r: &Record,
    ) {
        let (keys, per_gpu, since, end_of_window) = tally;
        let start = start.max(since);
        let end = end.min(end_of_window);
        if end < start {
            return;
        }
        // A row from the first instant (0 hours): its counter series starts at zero.
        let hours = end.duration_since(start).as_secs_f64() / 3600.0;
        if per_gpu {
            for g in &r.gpus {
                Self::row(rows, key_fields(keys, r, Some(g))).gpu_hours += hours;
            }
        } else if !r.gpus.is_empty() {
            Self::row(rows, key_fields(keys, r, None)).gpu_hours += hours * r.gpus.len() as f64;
        }
    }

    /// The next record, at `at`.
    pub fn feed(&mut self, at: Timestamp, r: Record) {
        let window = (
            self.keys.as_slice(),
            self.per_gpu(),
            self.since,
            self.until.min(self.now),
        );
        let (a, b) = r.domain_key();
        let key = (a.to_owned(), b.to_owned());
        match r.event {
            Event::Start => {
                // A start while one is open: the stop went missing; the old one ends here.
                if let Some((start, old)) = self.open.insert(key, (at, r)) {
                    Self::add(&mut self.rows, window, start, at, &old);
                }
            }
            Event::Running => {
                self.open.entry(key).or_insert((at, r));
            }
            Event::Stop => self.close(at, key),
            Event::Refused => {
                if at < self.since || at >= self.until {
                    return;
                }
                let mut combos: Vec<Fields> = if self.per_gpu() && !r.gpus.is_empty() {
                    r.gpus
                        .iter()
                        .map(|g| key_fields(&self.keys, &r, Some(g)))
                        .collect()
                } else {
                    vec![key_fields(&self.keys, &r, None)]
                };
                combos.dedup();
                for fields in combos {
                    let entry = Self::row(&mut self.rows, fields);
                    entry.refusals += 1;
                    for check in r.checks.iter().flatten() {
                        *entry.refusals_by_check.entry(check.clone()).or_default() += 1;
                    }
                }
            }
        }
    }

    /// A `stop` of the domain `key` (see `Record::domain_key`) at `at`.
    pub(super) fn close(&mut self, at: Timestamp, key: (String, String)) {
        if let Some((start, opened)) = self.open.remove(&key) {
            let window = (
                self.keys.as_slice(),
                self.per_gpu(),
                self.since,
                self.until.min(self.now),
            );
            Self::add(&mut self.rows, window, start, at.max(start), &opened);
        }
    }

    /// The intervals still open: (start, the record that opened it), oldest first.
    pub fn open(&self) -> Vec<(Timestamp, &Record)> {
        let mut open: Vec<(Timestamp, &Record)> =
            self.open.values().map(|(t, r)| (*t, r)).collect();
        open.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.domain.cmp(&b.1.domain)));
        open
    }

    /// The rows, open intervals counted up to now.
    pub fn rows(&self) -> Vec<UsageRow> {
        let mut rows = self.rows.clone();
        let window = (
            self.keys.as_slice(),
            self.per_gpu(),
            self.since,
            self.until.min(self.now),
        );
        for (start, r) in self.open.values() {
            Self::add(&mut rows, window, *start, self.now, r);
        }
        rows.into_values().collect()
    }
}

/// GPU-hours per key combination over `[since, until)` of `records` (any order).
pub fn usage(
    records: &[Record],
    keys: &[Key],
    since: Timestamp,
    until: Timestamp,
    now: Timestamp,
) -> Vec<UsageRow> {
    let mut timed: Vec<(Timestamp, &Record)> = records
        .iter()
        .filter_map(|r| r.time().map(|t| (t, r)))
        .collect();
    timed.sort_by_key(|(t, _)| *t);
    let mut tally = Tally::new(keys, since, until, now);
    for (t, r) in timed {
        tally.feed(t, r.clone());
    }
    tally.rows()
}
