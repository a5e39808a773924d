//! The memory checks: what a domain with host devices pins (all of its memory, VFIO
//! maps it), against what the host has free for it, in huge pages or not.

use super::*;

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
        if request.size_bytes == Some(0) {
            findings.push(Finding::problem(
                Severity::Fail,
                "hugepages",
                None,
                "a <page> of size 0 names no huge page size".into(),
                "give the page's size (size='1' unit='G', or size='2' unit='M'), or leave \
                 size out for the host's default"
                    .into(),
            ));
            continue;
        }
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

pub(super) fn check_memory(
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
                    "<memtune><hard_limit> is {} KiB, below memory + 1 GiB = {} KiB: QEMU \
                     would be killed or fail to lock guest memory",
                    limit / 1024,
                    needed / 1024
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
