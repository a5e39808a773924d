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
    Ok(release_index(release)? >= release_index(FIRST_WITH_DEVICE_SPEC)?)
}

/// The alias of a model: `<vendor>_<device>` in lower-case hex. It must be the same on
/// every host for the same model (controllers and computes must agree) and differ
/// between models, so it comes from the ids, never from pci.ids.
pub fn alias_name(vendor: u16, device: u16) -> String {
    format!("{vendor:04x}_{device:04x}")
}

/// The scheduler filters a release enables by default (nova.conf
/// `[filter_scheduler] enabled_filters`): RetryFilter left the defaults in Train,
/// AvailabilityZoneFilter (replaced by a placement pre-filter) in Caracal (2024.1).
fn default_filters(release_index: usize) -> Vec<&'static str> {
    let at = |name: &str| {
        RELEASES
            .iter()
            .position(|r| *r == name)
            .expect("a release in the list")
    };
    let mut filters = Vec::new();
    if release_index < at("train") {
        filters.push("RetryFilter");
    }
    if release_index < at("caracal") {
        filters.push("AvailabilityZoneFilter");
    }
    filters.extend([
        "ComputeFilter",
        "ComputeCapabilitiesFilter",
        "ImagePropertiesFilter",
        "ServerGroupAntiAffinityFilter",
        "ServerGroupAffinityFilter",
    ]);
    filters
}

/// The position of `release` (code name or `2024.1`) in [`RELEASES`].
fn release_index(release: &str) -> Result<usize> {
    let lower = release.to_ascii_lowercase();
    let name = DATED
        .iter()
        .find(|(dated, _)| *dated == lower)
        .map_or(lower.as_str(), |(_, name)| name);
    RELEASES.iter().position(|r| *r == name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown OpenStack release {release:?}; known: {} (or 2023.1 to 2026.1)",
            RELEASES.join(", ")
        )
    })
}

/// One alias: a (vendor, device) of one function.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Alias {
    name: String,
    vendor: String,
    product: String,
    device_type: &'static str,
    model: Option<String>,
}

/// What nova-config offers to Nova.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The GPU function of each card only (the default).
    GpuFunctionOnly,
    /// The sibling functions (HDMI audio, USB, UCSI) too, as aliases of their own.
    WithSiblings,
}

/// The warning printed when the sibling functions are offered.
pub const SIBLINGS_WARNING: &str = "Nova does not keep the functions of one card together: a VM \
    can get card A's GPU and card B's audio, and the hook then refuses the next VM on card B \
    (its group is split between two VMs). Offer the sibling functions only where every VM \
    takes whole cards in a way you control.";

pub fn render(gpus: &[&Gpu], left_out: &[String], release: &str, offer: Offer) -> Result<String> {
    let index = release_index(release)?;
    let device_spec = index >= release_index(FIRST_WITH_DEVICE_SPEC)?;
    if gpus.is_empty() {
        bail!(
            "no NVIDIA GPU found on this host that can be passed through: nothing to configure \
             (see `gpu-passthrough scan`)"
        );
    }
    // One alias per (vendor, device); one flavor per GPU model.
    let mut aliases: BTreeMap<(String, String), Alias> = BTreeMap::new();
    let mut flavors: BTreeMap<String, (Option<String>, Vec<String>)> = BTreeMap::new();
    for gpu in gpus {
        let functions = match offer {
            Offer::GpuFunctionOnly => &gpu.functions[..1],
            Offer::WithSiblings => &gpu.functions[..],
        };
        let mut wanted = Vec::new();
        for (f, e) in functions {
            let alias = aliases
                .entry((e.vendor_id.clone(), e.device_id.clone()))
                .or_insert_with(|| Alias {
                    name: alias_name(f.vendor_id, f.device_id),
                    vendor: e.vendor_id.clone(),
                    product: e.device_id.clone(),
                    device_type: e.nova_device_type,
                    model: e.name.clone(),
                });
            wanted.push(format!("{}:1", alias.name));
        }
        let (v, d) = gpu.ids();
        flavors
            .entry(alias_name(v, d))
            .or_insert((gpu.functions[0].1.name.clone(), wanted));
    }

    let mut out = String::new();
    let key = if device_spec {
        "device_spec"
    } else {
        "passthrough_whitelist"
    };
    writeln!(out, "# nova.conf on this compute host ({release})")?;
    for why in left_out {
        writeln!(out, "# Not offered: {why}.")?;
    }
    if offer == Offer::WithSiblings {
        writeln!(out, "# WARNING: {SIBLINGS_WARNING}")?;
    } else {
        writeln!(
            out,
            "# Only each card's GPU function is offered; its audio/USB functions stay on \
             vfio-pci on this host."
        )?;
    }
    writeln!(out, "[pci]")?;
    for a in aliases.values() {
        writeln!(
            out,
            "{key} = {{\"vendor_id\": \"{}\", \"product_id\": \"{}\"}}",
            a.vendor, a.product
        )?;
    }
    for a in aliases.values() {
        if let Some(model) = &a.model {
            writeln!(out, "# {}: {model}", a.name)?;
        }
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
    let mut filters = default_filters(index);
    filters.push("PciPassthroughFilter");
    writeln!(
        out,
        "# {release}'s default filters, plus PciPassthroughFilter"
    )?;
    writeln!(out, "enabled_filters = {}", filters.join(","))?;
    writeln!(out)?;
    writeln!(out, "# Flavors: one GPU each")?;
    for (alias, (model, wanted)) in &flavors {
        let flavor = format!("gpu.{alias}");
        if let Some(model) = model {
            writeln!(out, "# {flavor}: {model}")?;
        }
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
    fn filters_follow_the_release() {
        let at = |r| default_filters(release_index(r).expect("known"));
        assert_eq!(
            at("queens"),
            vec![
                "RetryFilter",
                "AvailabilityZoneFilter",
                "ComputeFilter",
                "ComputeCapabilitiesFilter",
                "ImagePropertiesFilter",
                "ServerGroupAntiAffinityFilter",
                "ServerGroupAffinityFilter"
            ]
        );
        assert_eq!(at("train")[0], "AvailabilityZoneFilter");
        assert_eq!(at("2023.2")[0], "AvailabilityZoneFilter");
        assert_eq!(at("2024.1")[0], "ComputeFilter");
        assert_eq!(at("gazpacho").len(), 5);
    }

    #[test]
    fn alias_names_come_from_the_ids() {
        assert_eq!(alias_name(0x10de, 0x1b02), "10de_1b02");
        assert_eq!(alias_name(0x10DE, 0x1EB8), "10de_1eb8");
    }
}
