//! The host's GPUs: each display-class PCI function with the functions that must go
//! with it into a VM (the other functions of its slot, the other members of its IOMMU
//! group), and which running domain holds what.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use host_model::domain::Domain;
use host_model::libvirt::running_domains;
use host_model::pci::{self, PciAddress, PciFunction, CLASS_DISPLAY};
use host_model::pciids;
use serde::Serialize;

pub const NVIDIA: u16 = 0x10de;

/// Where the inventory reads the host from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub sysfs: PathBuf,
    pub libvirt_run: PathBuf,
    pub pci_ids: Option<PathBuf>,
}

/// One PCI function as `scan --json` shows it (the contract's fields, and `gpu`: the
/// display function it goes with).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FunctionEntry {
    pub address: String,
    pub vendor_id: String,
    pub device_id: String,
    pub class: String,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub iommu_group_members: Vec<String>,
    pub nova_device_type: &'static str,
    pub in_use_by: Option<String>,
    /// The display function this one goes with (itself for a display function).
    pub gpu: String,
    pub numa_node: Option<u32>,
}

/// A GPU: its display function first, then the functions that go with it.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub functions: Vec<(PciFunction, FunctionEntry)>,
}

impl Gpu {
    pub fn display(&self) -> &PciFunction {
        &self.functions[0].0
    }
}

#[derive(Debug)]
pub struct Inventory {
    pub gpus: Vec<Gpu>,
    pub running: Vec<Domain>,
    /// PCI functions and status files that could not be read: the commands say so on
    /// stderr and go on with the rest.
    pub unreadable: Vec<String>,
}

impl Inventory {
    pub fn read(src: &Sources) -> Result<Inventory> {
        let addresses = pci::list_addresses(&src.sysfs).with_context(|| {
            format!(
                "cannot list PCI devices in {}",
                src.sysfs.join("bus/pci/devices").display()
            )
        })?;
        let mut functions = BTreeMap::new();
        let mut unreadable = Vec::new();
        for addr in addresses {
            // One odd function must not hide the others: it is reported and left out.
            match PciFunction::read(&src.sysfs, addr) {
                Ok(f) => {
                    functions.insert(addr, f);
                }
                Err(e) => unreadable.push(format!("PCI function {addr} left out: {e}")),
            }
        }
        let running = running_domains(&src.libvirt_run);
        unreadable.extend(running.unreadable);
        let mut holder: BTreeMap<PciAddress, String> = BTreeMap::new();
        for d in &running.domains {
            for h in &d.hostdevs {
                holder.insert(h.address, d.name.clone());
            }
        }
        let pci_ids_text = src
            .pci_ids
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let name_of = |f: &PciFunction| {
            pci_ids_text
                .as_deref()
                .and_then(|t| pciids::lookup_in(t, f.vendor_id, f.device_id))
        };

        let mut gpus = Vec::new();
        for display in functions
            .values()
            .filter(|f| pci::base_class(f.class) == CLASS_DISPLAY)
        {
            let mut members = vec![display.address];
            // Same slot: HDMI audio, and the USB/UCSI functions of Turing cards.
            members.extend(functions.keys().copied().filter(|a| {
                (a.domain, a.bus, a.device)
                    == (
                        display.address.domain,
                        display.address.bus,
                        display.address.device,
                    )
                    && *a != display.address
            }));
            // Same IOMMU group, bridges aside.
            let group_members = group_members_of(&src.sysfs, display);
            for m in &group_members {
                let is_bridge = functions
                    .get(m)
                    .is_some_and(|f| pci::is_pci_bridge(f.class));
                if !members.contains(m) && !is_bridge && functions.contains_key(m) {
                    members.push(*m);
                }
            }
            let entries = members
                .iter()
                .map(|a| {
                    let f = functions[a].clone();
                    let entry = FunctionEntry {
                        address: a.to_string(),
                        vendor_id: format!("{:04x}", f.vendor_id),
                        device_id: format!("{:04x}", f.device_id),
                        class: format!("0x{:06x}", f.class),
                        name: name_of(&f),
                        driver: f.driver.clone(),
                        iommu_group: f.iommu_group,
                        iommu_group_members: group_members_of(&src.sysfs, &f)
                            .iter()
                            .map(PciAddress::to_string)
                            .collect(),
                        nova_device_type: if f.is_virtual_function {
                            "type-VF"
                        } else if f.sriov_capable {
                            "type-PF"
                        } else {
                            "type-PCI"
                        },
                        in_use_by: holder.get(a).cloned(),
                        gpu: display.address.to_string(),
                        numa_node: f.numa_node,
                    };
                    (f, entry)
                })
                .collect();
            gpus.push(Gpu { functions: entries });
        }
        Ok(Inventory {
            gpus,
            running: running.domains,
            unreadable,
        })
    }

    /// The GPUs `install`, `check` and `nova-config` work on: the ones whose display
    /// function matches `--gpu VENDOR:DEVICE`, else every NVIDIA one. A BMC's VGA
    /// (ASPEED, Matrox) is never among the defaults.
    pub fn selected(&self, wanted: &[(u16, u16)]) -> Vec<&Gpu> {
        self.gpus
            .iter()
            .filter(|g| {
                let d = g.display();
                if wanted.is_empty() {
                    d.vendor_id == NVIDIA
                } else {
                    wanted.contains(&(d.vendor_id, d.device_id))
                }
            })
            .collect()
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.running.iter().find(|d| d.name == name)
    }
}

fn group_members_of(sysfs: &Path, f: &PciFunction) -> Vec<PciAddress> {
    f.iommu_group
        .and_then(|g| pci::iommu_group_members(sysfs, g).ok())
        .unwrap_or_default()
}

/// Parse `--gpu VENDOR:DEVICE` (hex, e.g. `10de:1b02`).
pub fn parse_ids(s: &str) -> Result<(u16, u16), String> {
    let (v, d) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not VENDOR:DEVICE in hex, e.g. 10de:1b02"))?;
    let hex = |x: &str| {
        (x.len() == 4)
            .then(|| u16::from_str_radix(x, 16).ok())
            .flatten()
            .ok_or_else(|| format!("{s:?} is not VENDOR:DEVICE in hex, e.g. 10de:1b02"))
    };
    Ok((hex(v)?, hex(d)?))
}
