//! `scan` and `status`: the host's display functions, and its passthrough GPUs with
//! who holds them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::files::under;
use crate::install;
use crate::{read_inventory, Paths};

pub fn scan(paths: &Paths, json: bool) -> Result<ExitCode> {
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

pub fn status(paths: &Paths, json: bool, prometheus: bool) -> Result<ExitCode> {
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
