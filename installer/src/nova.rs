//! `nova-config`: the nova.conf settings and flavor commands for this host's GPUs.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{bail, Result};

use crate::inventory::Gpu;

/// OpenStack releases in order; `[pci] device_spec` replaced `passthrough_whitelist`
/// in Zed.
pub const RELEASES: &[&str] = &[
    "queens",
    "rocky",
    "stein",
    "train",
    "ussuri",
    "victoria",
    "wallaby",
    "xena",
    "yoga",
    "zed",
    "antelope",
    "bobcat",
    "caracal",
    "dalmatian",
    "epoxy",
    "flamingo",
    "gazpacho",
];
const FIRST_WITH_DEVICE_SPEC: &str = "zed";
/// Dated release names and their code names.
const DATED: &[(&str, &str)] = &[
    ("2023.1", "antelope"),
    ("2023.2", "bobcat"),
    ("2024.1", "caracal"),
    ("2024.2", "dalmatian"),
    ("2025.1", "epoxy"),
    ("2025.2", "flamingo"),
    ("2026.1", "gazpacho"),
];

/// Whether `release` (code name or `2024.1`) uses `device_spec`.
pub fn uses_device_spec(release: &str) -> Result<bool> {
    let lower = release.to_ascii_lowercase();
    let name = DATED
        .iter()
        .find(|(dated, _)| *dated == lower)
        .map_or(lower.as_str(), |(_, name)| name);
    let Some(index) = RELEASES.iter().position(|r| *r == name) else {
        bail!(
            "unknown OpenStack release {release:?}; known: {} (or 2023.1 to 2026.1)",
            RELEASES.join(", ")
        );
    };
    let zed = RELEASES
        .iter()
        .position(|r| *r == FIRST_WITH_DEVICE_SPEC)
        .expect("zed is in the list");
    Ok(index >= zed)
}

/// The function type part of an alias name, from the PCI class.
fn function_type(class: u32) -> String {
    match class >> 8 {
        0x0300 => "VGA".into(),
        0x0302 => "3D".into(),
        0x0380 => "DISPLAY".into(),
        0x0403 => "SND".into(),
        0x0c03 => "USB".into(),
        0x0c80 => "UCSI".into(),
        other => format!("CLASS{other:04X}"),
    }
}

/// The chip's short name from pci.ids (`GP102 [TITAN Xp]` gives `GP102`), else the ids.
fn chip(name: Option<&str>, vendor: u16, device: u16) -> String {
    let device_part = name.and_then(|n| {
        // pci.ids names are "Vendor Device"; the chip code is the first word of the
        // device part that has both letters and digits.
        n.split_whitespace()
            .find(|w| {
                w.chars().any(|c| c.is_ascii_digit()) && w.chars().any(|c| c.is_ascii_uppercase())
            })
            .map(|w| {
                w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_owned()
            })
    });
    device_part
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("{vendor:04x}_{device:04x}"))
}

/// One alias: a (vendor, device) of one function type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Alias {
    name: String,
    vendor: String,
    product: String,
    device_type: &'static str,
}

pub fn render(gpus: &[&Gpu], release: &str) -> Result<String> {
    let device_spec = uses_device_spec(release)?;
    if gpus.is_empty() {
        bail!(
            "no NVIDIA GPU found on this host: nothing to configure (see `gpu-passthrough scan`)"
        );
    }
    // One alias per (vendor, device); one flavor per GPU model asking for all its functions.
    let mut aliases: BTreeMap<(String, String), Alias> = BTreeMap::new();
    let mut flavors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for gpu in gpus {
        let display_entry = &gpu.functions[0].1;
        let model = chip(
            display_entry.name.as_deref(),
            gpu.display().vendor_id,
            gpu.display().device_id,
        );
        let mut wanted = Vec::new();
        for (f, e) in &gpu.functions {
            let alias = aliases
                .entry((e.vendor_id.clone(), e.device_id.clone()))
                .or_insert_with(|| Alias {
                    name: format!("{model}_{}", function_type(f.class)),
                    vendor: e.vendor_id.clone(),
                    product: e.device_id.clone(),
                    device_type: e.nova_device_type,
                });
            wanted.push(format!("{}:1", alias.name));
        }
        flavors.entry(model).or_insert(wanted);
    }

    let mut out = String::new();
    let key = if device_spec {
        "device_spec"
    } else {
        "passthrough_whitelist"
    };
    writeln!(out, "# nova.conf on this compute host ({release})")?;
    writeln!(out, "[pci]")?;
    for a in aliases.values() {
        writeln!(
            out,
            "{key} = {{\"vendor_id\": \"{}\", \"product_id\": \"{}\"}}",
            a.vendor, a.product
        )?;
    }
    for a in aliases.values() {
        writeln!(
            out,
            "alias = {{\"vendor_id\": \"{}\", \"product_id\": \"{}\", \"device_type\": \"{}\", \"name\": \"{}\"}}",
            a.vendor, a.product, a.device_type, a.name
        )?;
    }
    writeln!(out)?;
    writeln!(out, "[DEFAULT]")?;
    writeln!(
        out,
        "# VFIO pins all guest memory: never overcommit it on a GPU host."
    )?;
    writeln!(out, "ram_allocation_ratio = 1.0")?;
    writeln!(out)?;
    writeln!(
        out,
        "# nova.conf on the controllers: the same [pci] alias lines, and"
    )?;
    writeln!(out, "[filter_scheduler]")?;
    writeln!(
        out,
        "available_filters = nova.scheduler.filters.all_filters"
    )?;
    writeln!(
        out,
        "enabled_filters = ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,\
         ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,PciPassthroughFilter"
    )?;
    writeln!(out)?;
    writeln!(out, "# Flavors: one GPU with all its functions each")?;
    for (model, wanted) in &flavors {
        let flavor = format!("gpu.{}", model.to_ascii_lowercase());
        writeln!(
            out,
            "openstack flavor create --vcpus 8 --ram 32768 --disk 80 {flavor}"
        )?;
        writeln!(
            out,
            "openstack flavor set {flavor} --property \"pci_passthrough:alias\"=\"{}\"",
            wanted.join(",")
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert!(!uses_device_spec("yoga").expect("yoga"));
        assert!(uses_device_spec("Zed").expect("zed"));
        assert!(uses_device_spec("2024.1").expect("dated"));
        assert!(uses_device_spec("folsom").is_err());
    }

    #[test]
    fn chip_names() {
        assert_eq!(
            chip(Some("NVIDIA Corporation GP102 [TITAN Xp]"), 0x10de, 0x1b02),
            "GP102"
        );
        assert_eq!(
            chip(
                Some("NVIDIA Corporation TU104GL [Tesla T4]"),
                0x10de,
                0x1eb8
            ),
            "TU104GL"
        );
        assert_eq!(chip(None, 0x10de, 0x1b02), "10de_1b02");
    }
}
