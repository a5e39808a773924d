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
    "hibiscus",
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
    ("2026.2", "hibiscus"),
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
            "unknown OpenStack release {release:?}; known: {} (or 2023.1 to 2026.2)",
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

/// The first release whose unified limits count GPUs requested through a PCI alias,
/// with PCI in Placement (Nova bug 2140631, fixed in May 2026).
const FIRST_WITH_PCI_QUOTA: &str = "hibiscus";

/// The resource class of a model: `CUSTOM_GPU_<VENDOR>_<DEVICE>`, from the ids like the
/// alias, so the same model has the same class on every host.
pub fn resource_class(vendor: u16, device: u16) -> String {
    format!("CUSTOM_GPU_{vendor:04X}_{device:04X}")
}

/// Where the provider config goes on a compute host.
pub const PROVIDER_CONFIG_DIR: &str = "/etc/nova/provider_config";
const PROVIDER_CONFIG_FILE: &str = "gpu-passthrough.yaml";

/// One model's quota class on this host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaClass {
    pub resource_class: String,
    pub alias: String,
    pub flavor: String,
    pub vendor_id: String,
    pub device_id: String,
    pub model: Option<String>,
    /// Passable GPUs of the model here.
    pub count: u32,
}

/// What `nova-config --quota` says, as data (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quota {
    pub release: String,
    /// `provider-config` (before 2026.2) or `pci-in-placement` (2026.2 on).
    pub method: &'static str,
    pub classes: Vec<QuotaClass>,
    /// nova.conf settings: section -> key -> value.
    pub nova_conf_compute: BTreeMap<String, BTreeMap<String, String>>,
    pub nova_conf_controller: BTreeMap<String, BTreeMap<String, String>>,
    /// The provider config file (before 2026.2): its path and content.
    pub provider_config_path: Option<String>,
    pub provider_config: Option<serde_json::Value>,
    pub commands: Vec<String>,
    pub why_in_step: &'static str,
}

const WHY_IN_STEP: &str =
    "The alias gives a VM its GPU (the PCI tracker and PciPassthroughFilter); \
    the resource class is what Placement and unified limits count. A flavor with the alias but \
    without the resource escapes the quota; a host whose inventory says more GPUs than it can \
    pass through lets Placement send VMs that the PCI filter then refuses. Keep one resource \
    per alias in every GPU flavor, and the inventory equal to the passable GPUs (run \
    `gpu-passthrough nova-config --quota` again after changing the GPUs).";

/// The quota settings for `gpus` under `release`.
pub fn quota(gpus: &[&Gpu], release: &str) -> Result<Quota> {
    let index = release_index(release)?;
    let native = index >= release_index(FIRST_WITH_PCI_QUOTA)?;
    if gpus.is_empty() {
        bail!("no NVIDIA GPU found on this host that can be passed through: nothing to count");
    }
    let mut classes: BTreeMap<(u16, u16), QuotaClass> = BTreeMap::new();
    for gpu in gpus {
        let (v, d) = gpu.ids();
        classes
            .entry((v, d))
            .or_insert_with(|| QuotaClass {
                resource_class: resource_class(v, d),
                alias: alias_name(v, d),
                flavor: format!("gpu.{}", alias_name(v, d)),
                vendor_id: format!("{v:04x}"),
                device_id: format!("{d:04x}"),
                model: gpu.functions[0].1.name.clone(),
                count: 0,
            })
            .count += 1;
    }
    let classes: Vec<QuotaClass> = classes.into_values().collect();
    let section = |pairs: &[(&str, &str, String)]| {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (s, k, v) in pairs {
            out.entry(s.to_string())
                .or_default()
                .insert(k.to_string(), v.clone());
        }
        out
    };
    let mut commands = Vec::new();
    for c in &classes {
        commands.push(format!(
            "openstack flavor set {} --property resources:{}=1",
            c.flavor, c.resource_class
        ));
    }
    for c in &classes {
        commands.push(format!(
            "openstack registered limit create --service nova --default-limit 0 class:{}",
            c.resource_class
        ));
        commands.push(format!(
            "openstack limit create --service nova --project PROJECT --resource-limit {} class:{}",
            c.count, c.resource_class
        ));
    }
    let unified = (
        "quota",
        "driver",
        "nova.quota.UnifiedLimitsDriver".to_owned(),
    );
    Ok(if native {
        Quota {
            release: release.to_owned(),
            method: "pci-in-placement",
            nova_conf_compute: section(&[("pci", "report_in_placement", "True".into())]),
            nova_conf_controller: section(&[
                ("filter_scheduler", "pci_in_placement", "True".into()),
                unified,
            ]),
            provider_config_path: None,
            provider_config: None,
            // Nova counts the PCI resource classes itself: no resources: property.
            commands: commands
                .into_iter()
                .filter(|c| !c.starts_with("openstack flavor set"))
                .collect(),
            classes,
            why_in_step:
                "Nova reports each device_spec's resource_class to Placement and counts \
                it against unified limits itself (from 2026.2): the flavor asks only for the alias.",
        }
    } else {
        let additional: Vec<serde_json::Value> = classes
            .iter()
            .map(|c| {
                serde_json::json!({ c.resource_class.clone(): {
                    "total": c.count, "reserved": 0, "min_unit": 1, "max_unit": c.count,
                    "step_size": 1, "allocation_ratio": 1.0
                }})
            })
            .collect();
        Quota {
            release: release.to_owned(),
            method: "provider-config",
            nova_conf_compute: section(&[(
                "compute",
                "provider_config_location",
                format!("{PROVIDER_CONFIG_DIR}/"),
            )]),
            nova_conf_controller: section(&[unified]),
            provider_config_path: Some(format!("{PROVIDER_CONFIG_DIR}/{PROVIDER_CONFIG_FILE}")),
            provider_config: Some(serde_json::json!({
                "meta": {"schema_version": "1.0"},
                "providers": [{
                    "identification": {"uuid": "$COMPUTE_NODE"},
                    "inventories": {"additional": additional},
                }],
            })),
            commands,
            classes,
            why_in_step: WHY_IN_STEP,
        }
    })
}

/// A JSON value as YAML (block style), enough for the provider config: maps, lists,
/// strings, numbers.
fn yaml(v: &serde_json::Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map {
                match val {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml(val, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(val))),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                let mut inner = String::new();
                yaml(item, indent + 2, &mut inner);
                // The first line of the item goes after the dash.
                let inner = inner.trim_start_matches(' ').to_owned();
                out.push_str(&format!("{pad}- {inner}"));
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

/// The quota settings as an operator reads them.
pub fn render_quota(q: &Quota) -> String {
    let mut out = String::new();
    let conf = |title: &str, c: &BTreeMap<String, BTreeMap<String, String>>, out: &mut String| {
        out.push_str(&format!("# {title}\n"));
        for (section, keys) in c {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    };
    out.push_str(&format!(
        "\n# Quotas: let Nova count GPUs ({}, {})\n",
        q.release,
        if q.method == "pci-in-placement" {
            "PCI in Placement: Nova counts the aliases' resource classes itself"
        } else {
            "before 2026.2 Nova's unified limits do not count PCI aliases: a custom resource \
             class per model does"
        }
    ));
    for c in &q.classes {
        out.push_str(&format!(
            "#   {} = {} GPU(s) of {}:{} here{}\n",
            c.resource_class,
            c.count,
            c.vendor_id,
            c.device_id,
            c.model
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    conf(
        "nova.conf on this compute host:",
        &q.nova_conf_compute,
        &mut out,
    );
    if let (Some(path), Some(config)) = (&q.provider_config_path, &q.provider_config) {
        out.push_str(&format!("# {path}:\n# --- begin provider config\n"));
        yaml(config, 0, &mut out);
        out.push_str("# --- end provider config\n");
    }
    if q.method == "pci-in-placement" {
        out.push_str("# and in each [pci] device_spec above, the model's \"resource_class\":\n");
        for c in &q.classes {
            out.push_str(&format!(
                "device_spec = {{\"vendor_id\": \"{}\", \"product_id\": \"{}\", \"resource_class\": \"{}\"}}\n",
                c.vendor_id, c.device_id, c.resource_class
            ));
        }
    }
    conf(
        "nova.conf on the controllers:",
        &q.nova_conf_controller,
        &mut out,
    );
    out.push_str("# Flavors and limits (PROJECT: the project's name or id):\n");
    for c in &q.commands {
        out.push_str(&format!("{c}\n"));
    }
    out.push_str(&format!(
        "# Why they must stay in step: {}\n",
        q.why_in_step
    ));
    out
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
