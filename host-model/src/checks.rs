//! Can this domain with host PCI devices start on this host? The checks behind the
//! libvirt hook's `prepare begin` and its `--check-xml` report.
//!
//! Each check gives a [`Finding`]: PASS, WARN or FAIL, with what is wrong and how to fix
//! it. The checks only read files (sysfs, procfs, libvirt's status files, pci.ids); they
//! never talk to libvirt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::bookings::Holder;
use crate::config::{BookingsConfig, BookingsMode, HookConfig};
use crate::domain::{Domain, HugepageRequest, NovaInstance, NumaCell};
use crate::libvirt::running_domains;
use crate::memory::{free_hugepages, human, parse_nodeset, MemInfo};
use crate::pci::{self, PciAddress, PciFunction};
use crate::pciids;

mod bookings;
mod memory;
pub use bookings::check_bookings;
use memory::check_memory;

/// Where the checks read the host from.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub sysfs: PathBuf,
    pub proc_root: PathBuf,
    pub libvirt_run: PathBuf,
    pub pci_ids: pciids::PciIds,
}

impl HostPaths {
    /// The real host, or what the `GPU_PASSTHROUGH_*` variables point to.
    pub fn from_env() -> Self {
        HostPaths {
            sysfs: crate::sysfs_root_from_env(),
            proc_root: crate::proc_root_from_env(),
            libvirt_run: crate::libvirt::run_dir_from_env(),
            pci_ids: pciids::PciIds::from_env(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Pass => "PASS",
            Severity::Warn => "WARN",
            Severity::Fail => "FAIL",
        })
    }
}

/// Every check's name, as findings, refusals in the ledger and metrics spell them.
pub const CHECK_NAMES: [&str; 11] = [
    "iommu",
    "device",
    "driver",
    "iommu-group",
    "in-use",
    "memory",
    "hard-limit",
    "hugepages",
    "balloon",
    "host-state",
    "booking",
];

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Short name of the check: `iommu`, `device`, `driver`, `iommu-group`, `in-use`,
    /// `memory`, `hard-limit`, `hugepages`, `balloon`, `host-state`.
    pub check: &'static str,
    /// The device the finding is about; [`Report::lines`] describes it with its ids
    /// and name.
    pub device: Option<PciAddress>,
    pub message: String,
    /// How to fix it (WARN and FAIL).
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: &'static str, device: Option<PciAddress>, message: String) -> Self {
        Finding {
            severity: Severity::Pass,
            check,
            device,
            message,
            fix: None,
        }
    }

    fn problem(
        severity: Severity,
        check: &'static str,
        device: Option<PciAddress>,
        message: String,
        fix: String,
    ) -> Self {
        Finding {
            severity,
            check,
            device,
            message,
            fix: Some(fix),
        }
    }
}

impl Finding {
    /// `FAIL iommu-group: 0000:18:00.0 (10de:1b02 NVIDIA ...): message. Fix: ...`
    pub fn line(&self, names: &mut DeviceNames) -> String {
        let mut line = format!("{} {}: ", self.severity, self.check);
        if let Some(device) = self.device {
            line.push_str(&names.describe(device));
            line.push_str(": ");
        }
        line.push_str(&self.message);
        if let Some(fix) = &self.fix {
            line.push_str(". Fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// All verdicts on one domain.
#[derive(Debug)]
pub struct Report {
    /// `'instance-0000002a' (Nova instance 'x', project 'y')`
    pub domain: String,
    pub findings: Vec<Finding>,
    names: DeviceNames,
}

impl Report {
    pub fn worst(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Pass)
    }

    /// The findings at `severity` or worse.
    pub fn at_least(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity >= severity)
    }

    /// The findings at `severity` or worse as lines, devices described. Only here are
    /// device names looked up, so a start that passes never reads pci.ids.
    pub fn lines(&mut self, severity: Severity) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.severity >= severity)
            .map(|f| f.line(&mut self.names))
            .collect()
    }
}

/// Names devices for messages, reading pci.ids at most once and only when needed.
#[derive(Debug)]
pub struct DeviceNames {
    sysfs: PathBuf,
    pci_ids: pciids::PciIds,
}

impl DeviceNames {
    pub fn new(host: &HostPaths) -> Self {
        DeviceNames {
            sysfs: host.sysfs.clone(),
            pci_ids: host.pci_ids.clone(),
        }
    }

    /// `0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp])`, or less where
    /// sysfs or pci.ids know less.
    pub fn describe(&mut self, address: PciAddress) -> String {
        let Ok(function) = PciFunction::read(&self.sysfs, address) else {
            return address.to_string();
        };
        let name = self.name(function.vendor_id, function.device_id);
        match name {
            Some(name) => format!("{address} ({} {name})", function.ids()),
            None => format!("{address} ({})", function.ids()),
        }
    }

    fn name(&mut self, vendor: u16, device: u16) -> Option<String> {
        self.pci_ids.name(vendor, device)
    }
}

const GIB: u64 = 1 << 30;

/// Run every check on `domain`. `config` gives the host memory reserve.
pub fn check_domain(domain: &Domain, host: &HostPaths, config: &HookConfig) -> Report {
    let mut findings = Vec::new();
    let mut names = DeviceNames::new(host);
    let running = running_domains(&host.libvirt_run);
    for problem in &running.unreadable {
        findings.push(Finding::problem(
            Severity::Warn,
            "host-state",
            None,
            format!("cannot read a running domain's status file: {problem}"),
            "nothing to do for this VM; the checks went on without that domain".into(),
        ));
    }
    // Who holds which function, among the other running domains.
    let others: Vec<&Domain> = running
        .domains
        .iter()
        .filter(|d| d.name != domain.name && (d.uuid.is_none() || d.uuid != domain.uuid))
        .collect();
    let mut holder: BTreeMap<PciAddress, &Domain> = BTreeMap::new();
    for other in &others {
        for dev in &other.hostdevs {
            holder.insert(dev.address, other);
        }
    }
    let ours: BTreeSet<PciAddress> = domain.hostdevs.iter().map(|h| h.address).collect();

    let iommu_on = pci::iommu_active(&host.sysfs);
    if iommu_on {
        findings.push(Finding::pass("iommu", None, "the IOMMU is on".into()));
    } else {
        findings.push(Finding::problem(
            Severity::Fail,
            "iommu",
            None,
            format!(
                "the IOMMU is off: {} is empty or missing, so no device can be passed through",
                host.sysfs.join("kernel/iommu_groups").display()
            ),
            "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on iommu=pt \
             (Intel; AMD needs only iommu=pt): run `gpu-passthrough install`, then reboot"
                .into(),
        ));
    }

    for hostdev in &domain.hostdevs {
        let addr = hostdev.address;
        if !pci::exists(&host.sysfs, &addr) {
            findings.push(Finding::problem(
                Severity::Fail,
                "device",
                Some(addr),
                "there is no PCI function at this address on this host".into(),
                "check the address with `lspci -D` and correct the <hostdev> (for Nova: \
                 the [pci] device_spec and alias of this compute host)"
                    .into(),
            ));
            continue;
        }
        let function = match PciFunction::read(&host.sysfs, addr) {
            Ok(f) => f,
            Err(e) => {
                findings.push(Finding::problem(
                    Severity::Fail,
                    "device",
                    Some(addr),
                    format!("cannot read it from sysfs: {e}"),
                    "check that sysfs is mounted and readable".into(),
                ));
                continue;
            }
        };
        findings.push(Finding::pass("device", Some(addr), "present".into()));

        if let Some(other) = holder.get(&addr) {
            findings.push(Finding::problem(
                Severity::Fail,
                "in-use",
                Some(addr),
                format!(
                    "held by the running domain '{}'{}",
                    other.name,
                    other.nova_description()
                ),
                format!(
                    "stop '{}' first or give this VM another device (for Nova: the PCI \
                     tracker thinks the device is free; check [pci] device_spec on this host)",
                    other.name
                ),
            ));
        }

        let driver = function.driver.as_deref();
        if !hostdev.managed && driver != Some("vfio-pci") {
            findings.push(Finding::problem(
                Severity::Fail,
                "driver",
                Some(addr),
                format!(
                    "managed='no', so libvirt will not detach it, but it is bound to {}",
                    driver.map_or("no driver".to_owned(), |d| format!("'{d}'"))
                ),
                "bind it to vfio-pci (`gpu-passthrough install` binds every function of the \
                 host's NVIDIA cards at boot), or set managed='yes' on the <hostdev>"
                    .into(),
            ));
        }

        if !iommu_on {
            continue;
        }
        findings.extend(check_group(
            &host.sysfs,
            &function,
            addr,
            &ours,
            &holder,
            &mut names,
        ));
    }

    findings.extend(check_memory(domain, host, config, &others));
    Report {
        domain: format!("'{}'{}", domain.name, domain.nova_description()),
        findings,
        names,
    }
}

/// VFIO can only use a group whose every member is free of host drivers.
fn check_group(
    sysfs: &Path,
    function: &PciFunction,
    addr: PciAddress,
    ours: &BTreeSet<PciAddress>,
    holder: &BTreeMap<PciAddress, &Domain>,
    names: &mut DeviceNames,
) -> Vec<Finding> {
    let Some(group) = function.iommu_group else {
        return vec![Finding::problem(
            Severity::Fail,
            "iommu-group",
            Some(addr),
            "it has no IOMMU group".into(),
            "the IOMMU does not cover this device: check the firmware's VT-d / AMD-Vi setting"
                .into(),
        )];
    };
    let members = match pci::iommu_group_members(sysfs, group) {
        Ok(members) => members,
        Err(e) => {
            return vec![Finding::problem(
                Severity::Fail,
                "iommu-group",
                Some(addr),
                format!("cannot list IOMMU group {group}: {e}"),
                "check that sysfs is mounted and readable".into(),
            )];
        }
    };
    let mut findings = Vec::new();
    for member in members.iter().filter(|m| **m != function.address) {
        if ours.contains(member) {
            continue;
        }
        if let Some(other) = holder.get(member) {
            findings.push(Finding::problem(
                Severity::Fail,
                "iommu-group",
                Some(addr),
                format!(
                    "IOMMU group {group} is shared with {}, which the running domain '{}' holds; \
                     a group can belong to one VM only",
                    names.describe(*member),
                    other.name
                ),
                format!(
                    "stop '{}' first, or use a GPU in another IOMMU group",
                    other.name
                ),
            ));
            continue;
        }
        let Ok(m) = PciFunction::read(sysfs, *member) else {
            findings.push(Finding::problem(
                Severity::Fail,
                "iommu-group",
                Some(addr),
                format!("cannot read {member}, a member of IOMMU group {group}"),
                "check that sysfs is mounted and readable".into(),
            ));
            continue;
        };
        if pci::is_pci_bridge(m.class) {
            continue;
        }
        match m.driver.as_deref() {
            None | Some("vfio-pci") | Some("pci-stub") => {}
            Some(driver) => findings.push(Finding::problem(
                Severity::Fail,
                "iommu-group",
                Some(addr),
                format!(
                    "IOMMU group {group} is not viable: {} is in the same group and bound to \
                     the host driver '{driver}'",
                    names.describe(*member)
                ),
                format!(
                    "pass {member} through to this VM as well (a <hostdev>; for Nova, an alias \
                     for it in the flavor), or, if it is a function of the GPU's card, bind it \
                     to vfio-pci (`gpu-passthrough install` does so at boot); if the host needs \
                     that device, move the card to a slot with its own IOMMU group"
                ),
            )),
        }
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            "iommu-group",
            Some(addr),
            match members.len() {
                1 => format!("IOMMU group {group} is viable (it alone)"),
                n => format!("IOMMU group {group} is viable ({n} members)"),
            },
        ));
    }
    findings
}
