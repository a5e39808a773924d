//! The host's GPUs: each display-class PCI function with the functions of its card (the
//! other functions of its slot with its vendor), the other members of its IOMMU group,
//! and which running domain holds what.
//!
//! A GPU card's functions are the functions of its own slot (domain:bus:device) with
//! the GPU's vendor; never other members of its IOMMU group, which may be a NIC or a
//! disk controller of the host (a board without ACS). Such a member on a host driver
//! makes the GPU unusable: passing it through would take that device from the host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use host_model::checks::HostPaths;
use host_model::domain::Domain;
use host_model::libvirt::running_domains;
use host_model::pci::{self, PciAddress, PciFunction, CLASS_DISPLAY};
use serde::Serialize;

pub const NVIDIA: u16 = 0x10de;

/// One PCI function as `scan --json` shows it (the contract's fields; `gpu`: the
/// display function it goes with; `role`: `gpu`, `card` (a function of the GPU's
/// card) or `group-member` (another member of its IOMMU group); `problem`: on a GPU,
/// why it cannot be passed through, on a group member, why it stands in the way).
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
    pub role: &'static str,
    pub problem: Option<String>,
}

/// A GPU: its card's functions (the display function first), and the other members
/// of its IOMMU group(s), bridges aside.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub functions: Vec<(PciFunction, FunctionEntry)>,
    pub group_others: Vec<(PciFunction, FunctionEntry)>,
}

impl Gpu {
    pub fn display(&self) -> &PciFunction {
        &self.functions[0].0
    }

    pub fn ids(&self) -> (u16, u16) {
        (self.display().vendor_id, self.display().device_id)
    }

    /// Whether `address` is one of this card's functions.
    pub fn has_function(&self, address: PciAddress) -> bool {
        self.functions.iter().any(|(f, _)| f.address == address)
    }

    /// The group members outside the card that a host driver holds (not vfio-pci or
    /// pci-stub), leaving out the functions of `also_bound` cards, which vfio-pci will
    /// take too.
    pub fn blockers<'a>(&'a self, also_bound: &[&Gpu]) -> Vec<&'a (PciFunction, FunctionEntry)> {
        self.group_others
            .iter()
            .filter(|(f, _)| {
                !matches!(
                    f.driver.as_deref(),
                    None | Some("vfio-pci") | Some("pci-stub")
                ) && !also_bound.iter().any(|g| g.has_function(f.address))
            })
            .collect()
    }

    /// Why the GPU cannot be passed through, naming each blocking device, its driver
    /// and the way out.
    pub fn blocker_text(&self, blockers: &[&(PciFunction, FunctionEntry)]) -> String {
        let devices: Vec<String> = blockers
            .iter()
            .map(|(f, e)| {
                format!(
                    "{} ({} {}, driver {})",
                    e.address,
                    f.ids(),
                    e.name.as_deref().unwrap_or("unknown to pci.ids"),
                    f.driver.as_deref().unwrap_or("none")
                )
            })
            .collect();
        format!(
            "GPU {} ({}) cannot be passed through without taking {} from the host: it is in \
             the same IOMMU group {}. Move the card to a slot with an IOMMU group of its own, \
             or enable ACS for that slot in the firmware",
            self.functions[0].1.address,
            self.display().ids(),
            devices.join(" and "),
            self.display()
                .iommu_group
                .map_or("?".to_owned(), |g| g.to_string())
        )
    }
}

/// Which GPUs can be set up, and which must be left out and why.
#[derive(Debug)]
pub struct Selection<'a> {
    pub usable: Vec<&'a Gpu>,
    /// (GPU, why it cannot be passed through).
    pub left_out: Vec<(&'a Gpu, String)>,
}

#[derive(Debug)]
pub struct Inventory {
    pub gpus: Vec<Gpu>,
    /// Every readable PCI function of the host, by address.
    pub functions: BTreeMap<PciAddress, PciFunction>,
    pub running: Vec<Domain>,
    /// PCI functions and status files that could not be read: the commands say so on
    /// stderr and go on with the rest.
    pub unreadable: Vec<String>,
}

impl Inventory {
    pub fn read(src: &HostPaths) -> Result<Inventory> {
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
        let pci_ids = &src.pci_ids;
        let name_of = |f: &PciFunction| pci_ids.name(f.vendor_id, f.device_id);

        let entry = |f: &PciFunction, display: PciAddress, role: &'static str| FunctionEntry {
            address: f.address.to_string(),
            vendor_id: format!("{:04x}", f.vendor_id),
            device_id: format!("{:04x}", f.device_id),
            class: format!("0x{:06x}", f.class),
            name: name_of(f),
            driver: f.driver.clone(),
            iommu_group: f.iommu_group,
            iommu_group_members: group_members_of(&src.sysfs, f)
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
            in_use_by: holder.get(&f.address).cloned(),
            gpu: display.to_string(),
            numa_node: f.numa_node,
            role,
            problem: None,
        };

        let mut gpus = Vec::new();
        for display in functions
            .values()
            .filter(|f| pci::base_class(f.class) == CLASS_DISPLAY)
        {
            let a = display.address;
            // The card: the functions of its slot with its vendor (HDMI audio, the
            // USB/UCSI functions of Turing cards), never a board device that shares the slot.
            let card: Vec<&PciFunction> = std::iter::once(display)
                .chain(functions.values().filter(|f| {
                    (f.address.domain, f.address.bus, f.address.device)
                        == (a.domain, a.bus, a.device)
                        && f.address != a
                        && f.vendor_id == display.vendor_id
                }))
                .collect();
            let card_addresses: BTreeSet<PciAddress> = card.iter().map(|f| f.address).collect();
            let mut others = BTreeSet::new();
            for f in &card {
                for m in group_members_of(&src.sysfs, f) {
                    if !card_addresses.contains(&m) {
                        others.insert(m);
                    }
                }
            }
            let group_others = others
                .into_iter()
                .filter_map(|m| functions.get(&m))
                .filter(|f| !pci::is_pci_bridge(f.class))
                .map(|f| (f.clone(), entry(f, a, "group-member")))
                .collect();
            gpus.push(Gpu {
                functions: card
                    .iter()
                    .map(|f| {
                        let role = if f.address == a { "gpu" } else { "card" };
                        ((*f).clone(), entry(f, a, role))
                    })
                    .collect(),
                group_others,
            });
        }
        Ok(Inventory {
            gpus,
            functions,
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
                if wanted.is_empty() {
                    g.display().vendor_id == NVIDIA
                } else {
                    wanted.contains(&g.ids())
                }
            })
            .collect()
    }

    /// The GPUs `status` and `metrics` cover: the passthrough GPUs, i.e. the NVIDIA
    /// display functions and those whose ids `install --gpu` put into the vfio-pci
    /// options (`modprobe_conf`: ROOT/etc/modprobe.d/gpu-passthrough.conf). A BMC's VGA
    /// is not a free GPU.
    pub fn passthrough(&self, modprobe_conf: &Path) -> Vec<&Gpu> {
        let text = std::fs::read_to_string(modprobe_conf).unwrap_or_default();
        let bound: Vec<(u16, u16)> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("options vfio-pci ids="))
            .flat_map(|ids| ids.split(','))
            .filter_map(|id| parse_ids(id.trim()).ok())
            .collect();
        self.gpus
            .iter()
            .filter(|g| g.display().vendor_id == NVIDIA || bound.contains(&g.ids()))
            .collect()
    }

    /// The selected GPUs split into those that can be passed through and those whose
    /// IOMMU group holds a device the host needs. vfio-pci takes every usable card's
    /// functions, so another usable card in the group does not stand in the way; a card
    /// left out may make another one unusable in turn, hence the loop.
    pub fn select(&self, wanted: &[(u16, u16)]) -> Selection<'_> {
        let mut usable = self.selected(wanted);
        let mut left_out = Vec::new();
        loop {
            let before = usable.len();
            let bound = usable.clone();
            usable.retain(|g| {
                let blockers = g.blockers(&bound);
                if blockers.is_empty() {
                    true
                } else {
                    left_out.push((*g, g.blocker_text(&blockers)));
                    false
                }
            });
            if usable.len() == before {
                break;
            }
        }
        left_out.sort_by_key(|(g, _)| g.display().address);
        Selection { usable, left_out }
    }

    /// Every GPU with its `problem` filled in as `scan` shows it: the default
    /// selection's view (every NVIDIA card set up together).
    pub fn scan_entries(&self) -> Vec<FunctionEntry> {
        let selection = self.select(&[]);
        let mut out = Vec::new();
        for gpu in &self.gpus {
            let problem = if selection.usable.iter().any(|g| std::ptr::eq(*g, gpu)) {
                None
            } else {
                let blockers = gpu.blockers(&selection.usable);
                (!blockers.is_empty()).then(|| gpu.blocker_text(&blockers))
            };
            let blockers: BTreeSet<PciAddress> = gpu
                .blockers(&selection.usable)
                .iter()
                .map(|(f, _)| f.address)
                .collect();
            for (i, (_, e)) in gpu.functions.iter().enumerate() {
                let mut e = e.clone();
                if i == 0 {
                    e.problem = problem.clone();
                }
                out.push(e);
            }
            for (f, e) in &gpu.group_others {
                let mut e = e.clone();
                if blockers.contains(&f.address) {
                    e.problem = Some(format!(
                        "on the host driver {}: GPU {} cannot be passed through without it",
                        f.driver.as_deref().unwrap_or("none"),
                        gpu.functions[0].1.address
                    ));
                }
                out.push(e);
            }
        }
        out
    }

    /// Host functions outside the `cards` that `vfio-pci ids=` would take too: their
    /// vendor:device is one of the cards' functions'.
    pub fn caught_by_ids(&self, cards: &[&Gpu]) -> Vec<&PciFunction> {
        let ids: BTreeSet<(u16, u16)> = cards
            .iter()
            .flat_map(|g| g.functions.iter().map(|(f, _)| (f.vendor_id, f.device_id)))
            .collect();
        self.functions
            .values()
            .filter(|f| {
                ids.contains(&(f.vendor_id, f.device_id))
                    && !cards.iter().any(|g| g.has_function(f.address))
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
