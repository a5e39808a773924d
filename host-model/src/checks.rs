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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
                format!(
                    "bind it to vfio-pci (`gpu-passthrough install --gpu {}` does it at boot), \
                     or set managed='yes' on the <hostdev>",
                    function.ids()
                ),
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

/// Whether the domain's project holds bookings for its GPUs now (`[bookings]`): a
/// `booking` finding per GPU that none covers, FAIL in enforce mode and WARN in warn
/// mode; a broken bookings file is one finding naming it. Domains without Nova's
/// metadata are not subject to bookings (`None`, and the caller says so).
pub fn check_bookings(
    domain: &Domain,
    host: &HostPaths,
    config: &BookingsConfig,
    bookings_file: &Path,
    bookings_index: Option<&Path>,
    hostname: &str,
    now: jiff::Timestamp,
) -> Option<Vec<Finding>> {
    if config.mode == BookingsMode::Off {
        return Some(Vec::new());
    }
    let nova = domain.nova.as_ref()?;
    let severity = if config.mode == BookingsMode::Enforce {
        Severity::Fail
    } else {
        Severity::Warn
    };
    let gpus = crate::ledger::gpus_of(domain, &host.sysfs, None);
    if gpus.is_empty() {
        return Some(Vec::new());
    }
    // Only this project's (and user's) bookings are checked and kept: the file may
    // hold thousands of other projects'.
    let names: Vec<&str> = [&nova.project_id, &nova.project, &nova.user_id, &nova.user]
        .into_iter()
        .filter_map(|n| n.as_deref())
        .collect();
    let bookings = match crate::bookings::load_matching(bookings_file, &names, bookings_index) {
        Ok(b) => b,
        Err(e) => {
            return Some(vec![Finding::problem(
                severity,
                "booking",
                None,
                format!("the bookings file cannot be used, so no GPU start can be checked: {e}"),
                format!(
                    "correct {} (or write it again: `gpu-passthrough bookings import`), or set \
                     [bookings] mode = \"warn\"",
                    bookings_file.display()
                ),
            )])
        }
    };
    let running = running_domains(&host.libvirt_run);
    let others: Vec<(String, NovaInstance, Vec<crate::ledger::GpuRef>)> = running
        .domains
        .iter()
        .filter_map(|d| {
            let n = d.nova.clone()?;
            Some((
                d.name.clone(),
                n,
                crate::ledger::gpus_of(d, &host.sysfs, None),
            ))
        })
        .collect();
    let holders: Vec<Holder<'_>> = others
        .iter()
        .map(|(name, n, g)| Holder {
            name,
            nova: n,
            gpus: g,
        })
        .collect();
    let want = Holder {
        name: &domain.name,
        nova,
        gpus: &gpus,
    };
    let project = nova
        .project
        .as_deref()
        .or(nova.project_id.as_deref())
        .unwrap_or("(unnamed)");
    Some(
        crate::bookings::uncovered(&bookings, hostname, config.match_user, now, &holders, &want)
            .into_iter()
            .map(|u| {
                Finding::problem(
                    severity,
                    "booking",
                    u.gpu.address.parse().ok(),
                    format!(
                        "project '{project}' has no booking that covers this GPU now: {}",
                        u.why
                    ),
                    match u.next {
                        Some(next) => format!(
                            "start it within a booking of the project; its next one that would \
                             cover it: {next}"
                        ),
                        None => "book the GPU for the project (the site's calendar), or ask the \
                                 cloud administrators"
                            .to_owned(),
                    },
                )
            })
            .collect(),
    )
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
                     for it in the flavor), or bind it to vfio-pci \
                     (`gpu-passthrough install --gpu {}`); if the host needs that device, move \
                     the card to a slot with its own IOMMU group",
                    m.ids()
                ),
            )),
        }
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            "iommu-group",
            Some(addr),
            format!("IOMMU group {group} is viable ({} members)", members.len()),
        ));
    }
    findings
}

/// A size as the kernel command line writes it: `1G`, `2M`.
fn kernel_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}G", bytes / GIB)
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// Huge pages, NUMA-aware as libvirt allocates them: a `<page nodeset>` names guest
/// NUMA cells; `<numatune>` maps each cell to host nodes (`<memnode>`, else
/// `<memory nodeset>`, else anywhere); a cell's memory comes from `<cpu><numa><cell>`
/// (a guest without cells is one cell 0 of all its memory). A `<page>` without a
/// nodeset backs every cell that no other `<page>` names.
fn check_hugepages(
    domain: &Domain,
    requests: &[HugepageRequest],
    default_size: Option<u64>,
    host: &HostPaths,
) -> Vec<Finding> {
    let cells: Vec<NumaCell> = if domain.numa_cells.is_empty() {
        vec![NumaCell {
            id: 0,
            memory_bytes: domain.memory_bytes,
        }]
    } else {
        domain.numa_cells.clone()
    };
    let mut findings = Vec::new();
    let named: BTreeSet<u32> = requests
        .iter()
        .filter_map(|r| r.nodeset.as_deref().and_then(parse_nodeset))
        .flatten()
        .collect();
    // (page size, host nodes as written or None for anywhere) -> (pages, guest cells)
    let mut demand: BTreeMap<(u64, Option<String>), (u64, Vec<u32>)> = BTreeMap::new();
    for request in requests {
        let Some(size) = request.size_bytes.or(default_size).filter(|s| *s > 0) else {
            findings.push(Finding::problem(
                Severity::Fail,
                "hugepages",
                None,
                "the VM asks for huge pages of the default size, and the host has none".into(),
                "reserve huge pages (hugepagesz=1G hugepages=N on the kernel command line)".into(),
            ));
            continue;
        };
        let covered: Vec<&NumaCell> = match request.nodeset.as_deref() {
            Some(set) => match parse_nodeset(set) {
                Some(ids) => cells.iter().filter(|c| ids.contains(&c.id)).collect(),
                None => {
                    findings.push(Finding::problem(
                        Severity::Fail,
                        "hugepages",
                        None,
                        format!("<page nodeset='{set}'> is not a set of guest NUMA cells"),
                        "write the nodeset as libvirt does, e.g. 0 or 0-1,3".into(),
                    ));
                    continue;
                }
            },
            None => cells.iter().filter(|c| !named.contains(&c.id)).collect(),
        };
        for cell in covered {
            let nodes = domain.numatune.host_nodes_of(cell.id).map(str::to_owned);
            let entry = demand.entry((size, nodes)).or_default();
            entry.0 += cell.memory_bytes.div_ceil(size);
            entry.1.push(cell.id);
        }
    }
    for ((size, nodes_text), (needed, guest_cells)) in demand {
        let nodes = nodes_text.as_deref().and_then(parse_nodeset);
        let cells_text = guest_cells
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let where_ = match (&nodes_text, &nodes) {
            (Some(set), Some(_)) if domain.numa_cells.is_empty() => {
                format!(" on host NUMA node(s) {set}")
            }
            (Some(set), Some(_)) => {
                format!(" on host NUMA node(s) {set} (guest cell(s) {cells_text})")
            }
            _ => String::new(),
        };
        let pool = format!("hugepages-{}kB", size / 1024);
        match free_hugepages(&host.sysfs, size, nodes.as_deref()) {
            Ok(free) if free >= needed => findings.push(Finding::pass(
                "hugepages",
                None,
                format!(
                    "{needed} huge pages of {} needed, {free} free{where_}",
                    human(size)
                ),
            )),
            Ok(free) => findings.push(Finding::problem(
                Severity::Fail,
                "hugepages",
                None,
                format!(
                    "the VM needs {needed} free huge pages of {}{where_}, the host has {free}",
                    human(size)
                ),
                format!(
                    "reserve more: raise nr_hugepages of the {pool} pool{} (or hugepages= on \
                     the kernel command line), or stop a VM that uses them",
                    match &nodes {
                        Some(n) => format!(
                            " on node(s) {} ({})",
                            nodes_text.as_deref().unwrap_or_default(),
                            host.sysfs
                                .join(format!(
                                    "devices/system/node/node{}/hugepages",
                                    n.first().copied().unwrap_or(0)
                                ))
                                .join(&pool)
                                .display()
                        ),
                        None => format!(
                            " ({})",
                            host.sysfs.join("kernel/mm/hugepages").join(&pool).display()
                        ),
                    }
                ),
            )),
            Err(e) => findings.push(Finding::problem(
                Severity::Fail,
                "hugepages",
                None,
                format!(
                    "the VM asks for huge pages of {}{where_}, and the host has no such pool: {e}",
                    human(size)
                ),
                format!(
                    "reserve them: hugepagesz={} hugepages=N on the kernel command line",
                    kernel_size(size)
                ),
            )),
        }
    }
    findings
}

fn check_memory(
    domain: &Domain,
    host: &HostPaths,
    config: &HookConfig,
    others: &[&Domain],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let memory = domain.memory_bytes;
    let meminfo = MemInfo::read(&host.proc_root);
    match &meminfo {
        Ok(info) => {
            let reserved = config.reserved_host_memory_mib.saturating_mul(1 << 20);
            let pinners: Vec<&&Domain> = others.iter().filter(|d| !d.hostdevs.is_empty()).collect();
            let pinned: u64 = pinners.iter().map(|d| d.memory_bytes).sum();
            let available = info
                .total_bytes
                .saturating_sub(reserved)
                .saturating_sub(pinned);
            let sum = format!(
                "MemTotal {} - reserved {} - {} pinned by {} running VM(s) with host devices{} = {}",
                human(info.total_bytes),
                human(reserved),
                human(pinned),
                pinners.len(),
                if pinners.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        pinners.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                },
                human(available)
            );
            if memory > available {
                findings.push(Finding::problem(
                    Severity::Fail,
                    "memory",
                    None,
                    format!(
                        "the host cannot pin this VM's {}: VFIO locks all of a VM's memory, and {sum}",
                        human(memory)
                    ),
                    "stop a VM with host devices, give this VM less memory, or lower [hook] \
                     reserved_host_memory_mib (for Nova: ram_allocation_ratio = 1.0 and \
                     reserved_host_memory_mb keep the scheduler from overcommitting GPU hosts)"
                        .into(),
                ));
            } else {
                findings.push(Finding::pass(
                    "memory",
                    None,
                    format!("{} can be pinned: {sum}", human(memory)),
                ));
            }
        }
        Err(e) => findings.push(Finding::problem(
            Severity::Fail,
            "memory",
            None,
            format!("cannot read the host's memory size: {e}"),
            "check that /proc is mounted and readable".into(),
        )),
    }

    if let Some(limit) = domain.hard_limit_bytes {
        let needed = memory.saturating_add(GIB);
        if limit < needed {
            findings.push(Finding::problem(
                Severity::Fail,
                "hard-limit",
                None,
                format!(
                    "<memtune><hard_limit> is {}, below memory + 1 GiB = {}: QEMU would be \
                     killed or fail to lock guest memory",
                    human(limit),
                    human(needed)
                ),
                format!(
                    "raise hard_limit to at least {} KiB or remove it (for Nova: the \
                     quota:memory_hard_limit flavor property)",
                    needed / 1024
                ),
            ));
        } else {
            findings.push(Finding::pass(
                "hard-limit",
                None,
                format!(
                    "<memtune><hard_limit> {} leaves room above memory + 1 GiB",
                    human(limit)
                ),
            ));
        }
    }

    if let Some(requests) = &domain.hugepages {
        let default_size = meminfo.as_ref().ok().and_then(|m| m.default_hugepage_bytes);
        findings.extend(check_hugepages(domain, requests, default_size, host));
    }

    if let Some(model) = &domain.balloon {
        findings.push(Finding::problem(
            Severity::Warn,
            "balloon",
            None,
            format!(
                "the VM has a {model} memory balloon, which cannot give memory back: VFIO \
                 pins all of it"
            ),
            "nothing needed (Nova before 32.0 cannot remove it); <memballoon model='none'/> \
             where you write the XML yourself"
                .into(),
        ));
    }
    if let Some(current) = domain.current_memory_bytes.filter(|c| *c < memory) {
        findings.push(Finding::problem(
            Severity::Warn,
            "balloon",
            None,
            format!(
                "<currentMemory> {} is below <memory> {}: VFIO pins the full {} anyway",
                human(current),
                human(memory),
                human(memory)
            ),
            "set <currentMemory> equal to <memory> to plan with what is really used".into(),
        ));
    }
    findings
}
