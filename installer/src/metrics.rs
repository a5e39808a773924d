//! `metrics`: the node_exporter textfile (`gpu_passthrough.prom`), and the ledger's
//! heartbeat.
//!
//! Each run first closes the intervals of domains that are gone without a `stop` (a
//! host crash): a `stop` with `"lost": true` at the previous heartbeat (or at the
//! interval's start when no heartbeat came after it), so that the ledger alone tells
//! the truth, to within one timer period. Then it writes the heartbeat and the file,
//! each atomically.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use host_model::domain::Domain;
use host_model::ledger::{self, Event, Key, Record};
use host_model::pci::{self, POWER_STATES};
use jiff::Timestamp;

use crate::files::write_atomic;
use crate::inventory::{Gpu, Inventory};

pub const FILE_NAME: &str = "gpu_passthrough.prom";

/// What `metrics` needs of the whole ledger, read once: GPU time per project and
/// model, refusals per check, the open intervals.
pub fn tally(usage_dir: &Path, now: Timestamp) -> Result<ledger::Tally> {
    let mut tally =
        ledger::Tally::new(&[Key::Project, Key::Model], Timestamp::UNIX_EPOCH, now, now);
    let problems = ledger::read_into(usage_dir, &mut tally)
        .with_context(|| format!("cannot read the ledger {}", usage_dir.display()))?;
    for p in &problems {
        eprintln!("gpu-passthrough: warning: {p}");
    }
    Ok(tally)
}

/// Close the lost intervals and write the heartbeat. Returns the records appended,
/// which the caller feeds to the tally.
pub fn close_lost_intervals(
    usage_dir: &Path,
    tally: &ledger::Tally,
    running: &[Domain],
    now: Timestamp,
) -> Result<Vec<Record>> {
    let heartbeat = ledger::read_heartbeat(usage_dir);
    let mut appended = Vec::new();
    for (start, r) in tally.open() {
        let still_running = running.iter().any(|d| match (&d.uuid, &r.domain_uuid) {
            (Some(a), Some(b)) => a == b,
            _ => d.name == r.domain,
        });
        if still_running {
            continue;
        }
        let at = heartbeat.filter(|h| *h > start).unwrap_or(start);
        let mut stop = r.clone();
        stop.ts = ledger::format_ts(at);
        stop.event = Event::Stop;
        stop.checks = None;
        stop.lost = true;
        ledger::append(usage_dir, &stop)?;
        appended.push(stop);
    }
    std::fs::create_dir_all(usage_dir)
        .with_context(|| format!("cannot create {}", usage_dir.display()))?;
    write_atomic(
        &ledger::heartbeat_path(usage_dir),
        format!("{}\n", ledger::format_ts(now)).as_bytes(),
        0o644,
    )?;
    Ok(appended)
}

/// A label value as the text format wants it.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A metric family's HELP and TYPE lines; its samples follow.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], value: impl std::fmt::Display) {
    if pairs.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", labels(pairs));
    }
}

/// The model label of a GPU: its pci.ids name, else VENDOR:DEVICE.
fn model_of(gpu: &Gpu) -> String {
    gpu.functions[0]
        .1
        .name
        .clone()
        .unwrap_or_else(|| gpu.display().ids())
}

/// The text file: every series of the contract's Metrics section.
pub fn render(
    inventory: &Inventory,
    gpus: &[&Gpu],
    tally: &ledger::Tally,
    sysfs: &Path,
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let running = |address: &str| -> Option<&Domain> {
        let a: pci::PciAddress = address.parse().ok()?;
        inventory
            .running
            .iter()
            .find(|d| d.hostdevs.iter().any(|h| h.address == a))
    };

    header(
        &mut out,
        "gpu_passthrough_gpu_info",
        "gauge",
        "A passthrough GPU of this host (1).",
    );
    for g in gpus {
        let e = &g.functions[0].1;
        let group = e.iommu_group.map(|n| n.to_string()).unwrap_or_default();
        let numa = e.numa_node.map(|n| n.to_string()).unwrap_or_default();
        let model = model_of(g);
        sample(
            &mut out,
            "gpu_passthrough_gpu_info",
            &[
                ("address", &e.address),
                ("vendor_id", &e.vendor_id),
                ("device_id", &e.device_id),
                ("model", &model),
                ("driver", e.driver.as_deref().unwrap_or("")),
                ("iommu_group", &group),
                ("numa_node", &numa),
            ],
            1,
        );
    }

    header(
        &mut out,
        "gpu_passthrough_gpu_in_use",
        "gauge",
        "Whether a running domain holds the GPU (1) or it is free (0), with the holder.",
    );
    for g in gpus {
        let e = &g.functions[0].1;
        let model = model_of(g);
        let holder = running(&e.address);
        let nova = holder.and_then(|d| d.nova.clone()).unwrap_or_default();
        let instance_id = holder
            .filter(|d| d.nova.is_some())
            .and_then(|d| d.uuid.clone())
            .unwrap_or_default();
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        sample(
            &mut out,
            "gpu_passthrough_gpu_in_use",
            &[
                ("address", &e.address),
                ("model", &model),
                ("domain", holder.map(|d| d.name.as_str()).unwrap_or("")),
                ("instance_id", &instance_id),
                ("instance_name", &s(&nova.name)),
                ("project_id", &s(&nova.project_id)),
                ("project_name", &s(&nova.project)),
                ("user_id", &s(&nova.user_id)),
                ("user_name", &s(&nova.user)),
                ("flavor_name", &s(&nova.flavor)),
            ],
            u8::from(holder.is_some()),
        );
    }

    header(
        &mut out,
        "gpu_passthrough_gpu_seconds_total",
        "counter",
        "GPU-seconds used per project and model, from the usage ledger.",
    );
    let rows = tally.rows();
    for row in &rows {
        let field = |name: &str| -> String {
            row.fields
                .iter()
                .find(|(f, _)| *f == name)
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let model = match field("model") {
            m if !m.is_empty() => m,
            _ => format!("{}:{}", field("vendor_id"), field("device_id")),
        };
        sample(
            &mut out,
            "gpu_passthrough_gpu_seconds_total",
            &[
                ("project_id", &field("project_id")),
                ("project_name", &field("project_name")),
                ("model", &model),
            ],
            format!("{:.0}", row.gpu_hours * 3600.0),
        );
    }

    header(
        &mut out,
        "gpu_passthrough_refusals_total",
        "counter",
        "VM starts the hook refused, per failing check, from the usage ledger.",
    );
    // Every check has its series from the start, at 0: a counter that appears only
    // at its first refusal would show no increase in PromQL.
    let mut per_check: BTreeMap<&str, u64> = host_model::checks::CHECK_NAMES
        .iter()
        .map(|c| (*c, 0))
        .collect();
    for row in &rows {
        for (c, n) in &row.refusals_by_check {
            *per_check.entry(c.as_str()).or_default() += n;
        }
    }
    for (check, n) in per_check {
        sample(
            &mut out,
            "gpu_passthrough_refusals_total",
            &[("check", check)],
            n,
        );
    }

    let healths: Vec<(String, pci::Health)> = gpus
        .iter()
        .map(|g| {
            let e = &g.functions[0].1;
            (
                e.address.clone(),
                pci::read_health(sysfs, &g.display().address),
            )
        })
        .collect();
    header(
        &mut out,
        "gpu_passthrough_power_state",
        "gauge",
        "The GPU's PCI power state as sysfs spells it (1 for the current one).",
    );
    for (address, h) in &healths {
        let current = h.power_state.as_deref().unwrap_or("unknown");
        for state in POWER_STATES {
            sample(
                &mut out,
                "gpu_passthrough_power_state",
                &[("address", address), ("state", state)],
                u8::from(state == current),
            );
        }
    }
    type Link = fn(&pci::Health) -> Option<f64>;
    let links: [(&str, &str, Link); 4] = [
        (
            "gpu_passthrough_pcie_link_speed_gts",
            "The PCIe link speed now, in GT/s (not read in D3cold).",
            |h| h.link_speed_gts.map(|s| s.0),
        ),
        (
            "gpu_passthrough_pcie_link_speed_gts_max",
            "The PCIe link speed the device and slot can do, in GT/s.",
            |h| h.link_speed_gts.map(|s| s.1),
        ),
        (
            "gpu_passthrough_pcie_link_width",
            "The PCIe link width now, in lanes (not read in D3cold).",
            |h| h.link_width.map(|w| f64::from(w.0)),
        ),
        (
            "gpu_passthrough_pcie_link_width_max",
            "The PCIe link width the device and slot can do, in lanes.",
            |h| h.link_width.map(|w| f64::from(w.1)),
        ),
    ];
    for (name, help, value) in links {
        header(&mut out, name, "gauge", help);
        for (address, h) in &healths {
            if let Some(v) = value(h) {
                sample(&mut out, name, &[("address", address)], v);
            }
        }
    }
    header(
        &mut out,
        "gpu_passthrough_aer_errors_total",
        "counter",
        "PCIe AER errors the GPU reported, per severity (sysfs aer_dev_*).",
    );
    for (address, h) in &healths {
        for (severity, n) in &h.aer {
            sample(
                &mut out,
                "gpu_passthrough_aer_errors_total",
                &[("address", address), ("severity", severity)],
                n,
            );
        }
    }
    header(
        &mut out,
        "gpu_passthrough_last_run_timestamp_seconds",
        "gauge",
        "When gpu-passthrough metrics last wrote this file (Unix time).",
    );
    sample(
        &mut out,
        "gpu_passthrough_last_run_timestamp_seconds",
        &[],
        now.as_second(),
    );
    out
}

/// `gpu_passthrough_unbooked_gpu_in_use`: for each GPU a running Nova VM holds, 1 when
/// no booking covers it (a violation), else 0. Only when bookings are not off.
pub fn unbooked(inventory: &Inventory, violations: &[crate::bookings::Violation]) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "gpu_passthrough_unbooked_gpu_in_use",
        "gauge",
        "A GPU a running Nova VM holds without a booking that covers it (1), or with one (0).",
    );
    for d in inventory.running.iter().filter(|d| d.nova.is_some()) {
        let nova = d.nova.as_ref().expect("filtered");
        for h in &d.hostdevs {
            let address = h.address.to_string();
            let Some(f) = inventory.functions.get(&h.address) else {
                continue;
            };
            if pci::base_class(f.class) != pci::CLASS_DISPLAY {
                continue;
            }
            let unbooked = violations
                .iter()
                .any(|v| v.domain == d.name && v.gpus.contains(&address));
            sample(
                &mut out,
                "gpu_passthrough_unbooked_gpu_in_use",
                &[
                    ("address", &address),
                    ("instance_id", d.uuid.as_deref().unwrap_or("")),
                    ("project_id", nova.project_id.as_deref().unwrap_or("")),
                ],
                u8::from(unbooked),
            );
        }
    }
    out
}

/// Write `text` as DIR/gpu_passthrough.prom, atomically (node_exporter reads only
/// `*.prom`, never the temp file).
pub fn write(textfile_dir: &Path, text: &str) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(textfile_dir)
        .with_context(|| format!("cannot create {}", textfile_dir.display()))?;
    let path = textfile_dir.join(FILE_NAME);
    write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}
