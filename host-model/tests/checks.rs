//! The hook's checks on fake hosts (the suite's sysfs trees), each report compared whole:
//! every finding's line, in order, devices described with their ids and names.

use host_model::checks::{check_domain, HostPaths, Severity};
use host_model::config::HookConfig;
use host_model::domain::Domain;
use host_model::pciids::PciIds;
use integration_tests::host::{HostRoot, LIBVIRT_RUN, PCI_IDS};
use integration_tests::PciFunction;

const GIB: u64 = 1 << 30;

/// A host with every kind of IOMMU group the checks tell apart:
/// - 30: a Titan Xp, both functions on vfio-pci;
/// - 40: a T4 on nouveau, alone;
/// - 50: an RTX 2080 with its USB controller on xhci_hcd;
/// - 60: a T4 with a PCIe bridge (pcieport), a function on pci-stub, one without a driver;
/// - 70: a T4 whose group lists a member that is gone from sysfs;
/// - none: a T4 outside every group.
fn host() -> HostRoot {
    let host = HostRoot::new();
    for func in [
        PciFunction::new(
            "0000:18:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("vfio-pci"),
            Some(30),
        ),
        PciFunction::new(
            "0000:18:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("vfio-pci"),
            Some(30),
        ),
        PciFunction::new(
            "0000:3b:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("nouveau"),
            Some(40),
        ),
        PciFunction::new(
            "0000:5e:00.0",
            0x10de,
            0x1e87,
            0x030000,
            Some("vfio-pci"),
            Some(50),
        ),
        PciFunction::new(
            "0000:5e:00.2",
            0x10de,
            0x1ad8,
            0x0c0330,
            Some("xhci_hcd"),
            Some(50),
        ),
        PciFunction::new(
            "0000:86:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            Some(60),
        ),
        PciFunction::new(
            "0000:85:00.0",
            0x8086,
            0x2030,
            0x060400,
            Some("pcieport"),
            Some(60),
        ),
        PciFunction::new(
            "0000:86:00.1",
            0x10de,
            0x10f8,
            0x040300,
            Some("pci-stub"),
            Some(60),
        ),
        PciFunction::new("0000:86:00.2", 0x10de, 0x1ad9, 0x0c8000, None, Some(60)),
        PciFunction::new(
            "0000:af:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            Some(70),
        ),
        PciFunction::new(
            "0000:af:00.1",
            0x10de,
            0x10f8,
            0x040300,
            Some("vfio-pci"),
            Some(70),
        ),
        PciFunction::new(
            "0000:d8:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            None,
        ),
    ] {
        host.add(&func);
    }
    // The group still lists af:00.1, whose directory is gone (hot-unplugged).
    std::fs::remove_dir_all(host.sysfs().device_dir("0000:af:00.1")).expect("rm");
    host.pci_ids(
        "10de  NVIDIA Corporation\n\t1b02  GP102 [TITAN Xp]\n\t10ef  GP102 HDMI Audio Controller\n\
         \t1eb8  TU104GL [Tesla T4]\n\t1e87  TU104 [GeForce RTX 2080 Rev. A]\n\
         \t1ad8  TU104 USB 3.1 Host Controller\n",
    );
    host.meminfo(64 * GIB);
    std::fs::create_dir_all(host.path(LIBVIRT_RUN)).expect("run");
    host
}

fn paths(host: &HostRoot) -> HostPaths {
    HostPaths {
        sysfs: host.sysfs().root().to_owned(),
        proc_root: host.path("proc"),
        libvirt_run: host.path(LIBVIRT_RUN),
        pci_ids: PciIds::at(Some(host.path(PCI_IDS))),
    }
}

fn hostdev(address: &str, managed: bool) -> String {
    let (bus, rest) = address[5..].split_once(':').expect("address");
    let (slot, function) = rest.split_once('.').expect("address");
    let managed = if managed { "yes" } else { "no" };
    format!(
        "<hostdev mode='subsystem' type='pci' managed='{managed}'><source><address \
         domain='0x0000' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>"
    )
}

fn domain(name: &str, uuid: &str, hostdevs: &[(&str, bool)]) -> String {
    let devices: String = hostdevs.iter().map(|(a, m)| hostdev(a, *m)).collect();
    format!(
        "<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='GiB'>8</memory>\
         <devices>{devices}</devices></domain>"
    )
}

fn report(host: &HostRoot, xml: &str, at_least: Severity) -> (Severity, Vec<String>) {
    let domain = Domain::from_xml(xml).expect("domain XML");
    let mut report = check_domain(&domain, &paths(host), &HookConfig::default());
    (report.worst(), report.lines(at_least))
}

const MEMORY_PASS: &str =
    "PASS memory: 8.0 GiB can be pinned: MemTotal 64.0 GiB - reserved 4.0 GiB - 0 MiB pinned by 0 running VM(s) with host devices = 60.0 GiB";

#[test]
fn every_group_shape_gets_its_verdict_and_devices_are_named() {
    let host = host();
    let xml = domain(
        "vm1",
        "u-1",
        &[
            ("0000:18:00.0", true),
            ("0000:18:00.1", true),
            ("0000:3b:00.0", false),
            ("0000:5e:00.0", true),
            ("0000:86:00.0", true),
            ("0000:af:00.0", true),
            ("0000:d8:00.0", true),
            ("0000:99:00.0", true),
        ],
    );
    let (worst, lines) = report(&host, &xml, Severity::Pass);
    assert_eq!(worst, Severity::Fail);
    let expected = [
        "PASS iommu: the IOMMU is on",
        "PASS device: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): present",
        "PASS iommu-group: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): IOMMU group 30 is viable (2 members)",
        "PASS device: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller): present",
        "PASS iommu-group: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller): IOMMU group 30 is viable (2 members)",
        "PASS device: 0000:3b:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): present",
        "FAIL driver: 0000:3b:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): managed='no', so libvirt will not detach it, but it is bound to 'nouveau'. Fix: bind it to vfio-pci (`gpu-passthrough install` binds every function of the host's NVIDIA cards at boot), or set managed='yes' on the <hostdev>",
        "PASS iommu-group: 0000:3b:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): IOMMU group 40 is viable (it alone)",
        "PASS device: 0000:5e:00.0 (10de:1e87 NVIDIA Corporation TU104 [GeForce RTX 2080 Rev. A]): present",
        "FAIL iommu-group: 0000:5e:00.0 (10de:1e87 NVIDIA Corporation TU104 [GeForce RTX 2080 Rev. A]): IOMMU group 50 is not viable: 0000:5e:00.2 (10de:1ad8 NVIDIA Corporation TU104 USB 3.1 Host Controller) is in the same group and bound to the host driver 'xhci_hcd'. Fix: pass 0000:5e:00.2 through to this VM as well (a <hostdev>; for Nova, an alias for it in the flavor), or, if it is a function of the GPU's card, bind it to vfio-pci (`gpu-passthrough install` does so at boot); if the host needs that device, move the card to a slot with its own IOMMU group",
        "PASS device: 0000:86:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): present",
        "PASS iommu-group: 0000:86:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): IOMMU group 60 is viable (4 members)",
        "PASS device: 0000:af:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): present",
        "FAIL iommu-group: 0000:af:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): cannot read 0000:af:00.1, a member of IOMMU group 70. Fix: check that sysfs is mounted and readable",
        "PASS device: 0000:d8:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): present",
        "FAIL iommu-group: 0000:d8:00.0 (10de:1eb8 NVIDIA Corporation TU104GL [Tesla T4]): it has no IOMMU group. Fix: the IOMMU does not cover this device: check the firmware's VT-d / AMD-Vi setting",
        "FAIL device: 0000:99:00.0: there is no PCI function at this address on this host. Fix: check the address with `lspci -D` and correct the <hostdev> (for Nova: the [pci] device_spec and alias of this compute host)",
        MEMORY_PASS,
    ];
    assert_eq!(lines, expected);
    // At WARN, only the problems; at FAIL the same here (no warnings).
    let problems: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|l| !l.starts_with("PASS"))
        .collect();
    assert_eq!(report(&host, &xml, Severity::Warn).1, problems);
    assert_eq!(report(&host, &xml, Severity::Fail).1, problems);
    // The failing checks, as the ledger's refusal records them.
    let domain = Domain::from_xml(&xml).expect("domain XML");
    let report = check_domain(&domain, &paths(&host), &HookConfig::default());
    let failing: Vec<(&str, Option<String>)> = report
        .at_least(Severity::Fail)
        .map(|f| (f.check, f.device.map(|d| d.to_string())))
        .collect();
    let on = |a: &str| Some(a.to_owned());
    assert_eq!(
        failing,
        [
            ("driver", on("0000:3b:00.0")),
            ("iommu-group", on("0000:5e:00.0")),
            ("iommu-group", on("0000:af:00.0")),
            ("iommu-group", on("0000:d8:00.0")),
            ("device", on("0000:99:00.0")),
        ]
    );
    assert_eq!(report.at_least(Severity::Pass).count(), expected.len());
}

#[test]
fn a_running_domain_holds_its_devices_and_their_group_but_not_the_domain_itself() {
    let host = host();
    // 'other' holds the Titan's audio function; its status file names it by uuid too.
    host.running("other", &domain("other", "u-2", &[("0000:18:00.1", true)]));
    let xml = domain("vm1", "u-1", &[("0000:18:00.0", true)]);
    let (worst, lines) = report(&host, &xml, Severity::Warn);
    assert_eq!(worst, Severity::Fail);
    assert_eq!(
        lines,
        ["FAIL iommu-group: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): IOMMU group 30 is shared with 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller), which the running domain 'other' holds; a group can belong to one VM only. Fix: stop 'other' first, or use a GPU in another IOMMU group"]
    );
    let both = domain(
        "vm1",
        "u-1",
        &[("0000:18:00.0", true), ("0000:18:00.1", true)],
    );
    let (_, lines) = report(&host, &both, Severity::Warn);
    assert_eq!(
        lines,
        ["FAIL in-use: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller): held by the running domain 'other'. Fix: stop 'other' first or give this VM another device (for Nova: the PCI tracker thinks the device is free; check [pci] device_spec on this host)"]
    );
    // The status file of the domain being started (libvirt writes it before
    // `prepare`), by name or by uuid under another name, holds nothing against it.
    for (name, uuid) in [("vm1", "u-9"), ("renamed", "u-1")] {
        let host = self::host();
        host.running(name, &domain(name, uuid, &[("0000:18:00.1", true)]));
        let (worst, lines) = report(&host, &both, Severity::Warn);
        assert_eq!((worst, lines), (Severity::Pass, vec![]), "{name} {uuid}");
    }
    // A running domain without a uuid is another domain when its name differs.
    let host = self::host();
    host.running(
        "old",
        "<domain type='kvm'><name>old</name><memory unit='GiB'>1</memory><devices>\
         <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' \
         bus='0x18' slot='0x00' function='0x1'/></source></hostdev></devices></domain>",
    );
    let (_, lines) = report(&host, &both, Severity::Fail);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("FAIL in-use: 0000:18:00.1 "),
        "{lines:?}"
    );
}

#[test]
fn without_the_iommu_groups_are_not_checked_and_names_degrade_gracefully() {
    let host = host();
    std::fs::remove_dir_all(host.sysfs().root().join("kernel/iommu_groups")).expect("rm");
    // No pci.ids: devices are described by their ids only.
    std::fs::remove_file(host.path(PCI_IDS)).expect("rm");
    let xml = domain("vm1", "u-1", &[("0000:3b:00.0", true)]);
    let (worst, lines) = report(&host, &xml, Severity::Pass);
    assert_eq!(worst, Severity::Fail);
    let groups = host.sysfs().root().join("kernel/iommu_groups");
    assert_eq!(
        lines,
        [
            format!("FAIL iommu: the IOMMU is off: {} is empty or missing, so no device can be passed through. Fix: enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on iommu=pt (Intel; AMD needs only iommu=pt): run `gpu-passthrough install`, then reboot", groups.display()),
            "PASS device: 0000:3b:00.0 (10de:1eb8): present".to_owned(),
            MEMORY_PASS.to_owned(),
        ]
    );
}

/// A domain of `memory_gib` with one GPU and `extra` inside <domain>.
fn gpu_domain(memory_gib: u64, extra: &str) -> String {
    format!(
        "<domain type='kvm'><name>vm1</name><uuid>u-1</uuid><memory unit='GiB'>{memory_gib}</memory>\
         {extra}<devices>{}</devices></domain>",
        hostdev("0000:18:00.0", true)
    )
}

/// The memory findings only (every other check passes on this host).
fn memory_lines(host: &HostRoot, xml: &str) -> Vec<String> {
    let (_, lines) = report(host, xml, Severity::Pass);
    lines
        .into_iter()
        .filter(|l| {
            ["memory:", "hard-limit:", "hugepages:", "balloon:"]
                .iter()
                .any(|c| {
                    l.split_once(' ')
                        .is_some_and(|(_, rest)| rest.starts_with(c))
                })
        })
        .collect()
}

#[test]
fn memory_is_what_is_left_after_the_reserve_and_the_running_pinners() {
    let host = host();
    host.running(
        "a",
        &domain("a", "u-a", &[("0000:5e:00.0", true)]).replace(
            "<memory unit='GiB'>8</memory>",
            "<memory unit='GiB'>20</memory>",
        ),
    );
    host.running(
        "b",
        &domain("b", "u-b", &[("0000:86:00.0", true)]).replace(
            "<memory unit='GiB'>8</memory>",
            "<memory unit='GiB'>10</memory>",
        ),
    );
    // No host devices: pins nothing.
    host.running(
        "c",
        &domain("c", "u-c", &[]).replace(
            "<memory unit='GiB'>8</memory>",
            "<memory unit='GiB'>30</memory>",
        ),
    );
    // 64 - 4 - 30 = 30 GiB: exactly 30 fits, 31 does not.
    let sum = "MemTotal 64.0 GiB - reserved 4.0 GiB - 30.0 GiB pinned by 2 running VM(s) with host devices (a, b) = 30.0 GiB";
    assert_eq!(
        memory_lines(&host, &gpu_domain(30, "")),
        [format!("PASS memory: 30.0 GiB can be pinned: {sum}")]
    );
    assert_eq!(
        memory_lines(&host, &gpu_domain(31, "")),
        [format!("FAIL memory: the host cannot pin this VM's 31.0 GiB: VFIO locks all of a VM's memory, and {sum}. Fix: stop a VM with host devices, give this VM less memory, or lower [hook] reserved_host_memory_mib (for Nova: ram_allocation_ratio = 1.0 and reserved_host_memory_mb keep the scheduler from overcommitting GPU hosts)")]
    );
    std::fs::remove_file(host.path("proc/meminfo")).expect("rm");
    assert_eq!(
        memory_lines(&host, &gpu_domain(1, "")),
        [format!("FAIL memory: cannot read the host's memory size: cannot read {}: No such file or directory (os error 2). Fix: check that /proc is mounted and readable", host.path("proc/meminfo").display())]
    );
}

#[test]
fn the_hard_limit_must_leave_a_gib_above_memory_and_a_balloon_only_warns() {
    let host = host();
    let limit = |kib: u64| format!("<memtune><hard_limit unit='KiB'>{kib}</hard_limit></memtune>");
    let pinned = "PASS memory: 8.0 GiB can be pinned: MemTotal 64.0 GiB - reserved 4.0 GiB - 0 MiB pinned by 0 running VM(s) with host devices = 60.0 GiB";
    assert_eq!(
        memory_lines(&host, &gpu_domain(8, &limit(9 << 20))),
        [
            pinned.to_owned(),
            "PASS hard-limit: <memtune><hard_limit> 9.0 GiB leaves room above memory + 1 GiB"
                .to_owned()
        ]
    );
    assert_eq!(
        memory_lines(&host, &gpu_domain(8, &limit((9 << 20) - 1))),
        [pinned.to_owned(), "FAIL hard-limit: <memtune><hard_limit> is 9437183 KiB, below memory + 1 GiB = 9437184 KiB: QEMU would be killed or fail to lock guest memory. Fix: raise hard_limit to at least 9437184 KiB or remove it (for Nova: the quota:memory_hard_limit flavor property)".to_owned()]
    );
    let balloon = "<currentMemory unit='GiB'>6</currentMemory>";
    let xml =
        gpu_domain(8, balloon).replace("</devices>", "<memballoon model='virtio'/></devices>");
    assert_eq!(
        memory_lines(&host, &xml),
        [
            pinned.to_owned(),
            "WARN balloon: the VM has a virtio memory balloon, which cannot give memory back: VFIO pins all of it. Fix: nothing needed (Nova before 32.0 cannot remove it); <memballoon model='none'/> where you write the XML yourself".to_owned(),
            "WARN balloon: <currentMemory> 6.0 GiB is below <memory> 8.0 GiB: VFIO pins the full 8.0 GiB anyway. Fix: set <currentMemory> equal to <memory> to plan with what is really used".to_owned(),
        ]
    );
    let equal = gpu_domain(8, "<currentMemory unit='GiB'>8</currentMemory>");
    assert_eq!(memory_lines(&host, &equal), [pinned]);
}

#[test]
fn huge_pages_come_from_the_pool_and_nodes_each_guest_cell_maps_to() {
    let host = host();
    let pool = |rel: &str, free: u32| {
        integration_tests::write_file(&host.sysfs().root().join(rel), format!("{free}\n"));
    };
    pool("kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", 12);
    pool(
        "devices/system/node/node0/hugepages/hugepages-1048576kB/free_hugepages",
        4,
    );
    pool(
        "devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages",
        8,
    );
    pool("kernel/mm/hugepages/hugepages-2048kB/free_hugepages", 1000);
    let pinned = "PASS memory: 8.0 GiB can be pinned: MemTotal 64.0 GiB - reserved 4.0 GiB - 0 MiB pinned by 0 running VM(s) with host devices = 60.0 GiB";
    let hugepages =
        |pages: &str| format!("<memoryBacking><hugepages>{pages}</hugepages></memoryBacking>");
    let cells = "<cpu><numa><cell id='0' cpus='0-3' memory='4' unit='GiB'/><cell id='1' cpus='4-7' memory='4' unit='GiB'/></numa></cpu>";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "1 GiB pages anywhere: 8 of 12 free",
            gpu_domain(8, &hugepages("<page size='1' unit='G'/>")),
            vec!["PASS hugepages: 8 huge pages of 1.0 GiB needed, 12 free".into()],
        ),
        (
            "the default size (2 MiB): 4096 of 1000 free",
            gpu_domain(8, &hugepages("")),
            vec![format!("FAIL hugepages: the VM needs 4096 free huge pages of 2 MiB, the host has 1000. Fix: reserve more: raise nr_hugepages of the hugepages-2048kB pool ({}) (or hugepages= on the kernel command line), or stop a VM that uses them", host.sysfs().root().join("kernel/mm/hugepages/hugepages-2048kB").display())],
        ),
        (
            "exactly as many free as needed, on host node 1 by <numatune>",
            gpu_domain(8, &format!("{}<numatune><memory mode='strict' nodeset='1'/></numatune>", hugepages("<page size='1' unit='G'/>"))),
            vec!["PASS hugepages: 8 huge pages of 1.0 GiB needed, 8 free on host NUMA node(s) 1".into()],
        ),
        (
            "two guest cells, each on its own host node: cell 0 needs 4 of node 0's 4, cell 1 4 of node 1's 8",
            gpu_domain(8, &format!("{cells}{}<numatune><memnode cellid='0' mode='strict' nodeset='0'/><memnode cellid='1' mode='strict' nodeset='1'/></numatune>", hugepages("<page size='1' unit='G'/>"))),
            vec![
                "PASS hugepages: 4 huge pages of 1.0 GiB needed, 4 free on host NUMA node(s) 0 (guest cell(s) 0)".into(),
                "PASS hugepages: 4 huge pages of 1.0 GiB needed, 8 free on host NUMA node(s) 1 (guest cell(s) 1)".into(),
            ],
        ),
        (
            "both cells on node 0: 8 needed, 4 free there",
            gpu_domain(8, &format!("{cells}{}<numatune><memory mode='strict' nodeset='0'/></numatune>", hugepages("<page size='1' unit='G'/>"))),
            vec![format!("FAIL hugepages: the VM needs 8 free huge pages of 1.0 GiB on host NUMA node(s) 0 (guest cell(s) 0,1), the host has 4. Fix: reserve more: raise nr_hugepages of the hugepages-1048576kB pool on node(s) 0 ({}) (or hugepages= on the kernel command line), or stop a VM that uses them", host.sysfs().root().join("devices/system/node/node0/hugepages/hugepages-1048576kB").display())],
        ),
        (
            "cell 1 names 2 MiB pages, the rest (cell 0) 1 GiB ones",
            gpu_domain(8, &format!("{cells}{}", hugepages("<page size='2' unit='M' nodeset='1'/><page size='1' unit='G'/>"))),
            vec![
                format!("FAIL hugepages: the VM needs 2048 free huge pages of 2 MiB, the host has 1000. Fix: reserve more: raise nr_hugepages of the hugepages-2048kB pool ({}) (or hugepages= on the kernel command line), or stop a VM that uses them", host.sysfs().root().join("kernel/mm/hugepages/hugepages-2048kB").display()),
                // Page sizes in order: the 1 GiB pages after the 2 MiB ones.
                "PASS hugepages: 4 huge pages of 1.0 GiB needed, 12 free".into(),
            ],
        ),
        (
            "a pool the host does not have",
            gpu_domain(8, &hugepages("<page size='16' unit='G'/>")),
            vec![format!("FAIL hugepages: the VM asks for huge pages of 16.0 GiB, and the host has no such pool: cannot read {}: No such file or directory (os error 2). Fix: reserve them: hugepagesz=16G hugepages=N on the kernel command line", host.sysfs().root().join("kernel/mm/hugepages/hugepages-16777216kB/free_hugepages").display())],
        ),
        (
            "a page of size 0",
            gpu_domain(8, &hugepages("<page size='0' unit='KiB'/>")),
            vec!["FAIL hugepages: a <page> of size 0 names no huge page size. Fix: give the page's size (size='1' unit='G', or size='2' unit='M'), or leave size out for the host's default".into()],
        ),
        (
            "a nodeset that is no set",
            gpu_domain(8, &hugepages("<page size='1' unit='G' nodeset='^1'/>")),
            vec!["FAIL hugepages: <page nodeset='^1'> is not a set of guest NUMA cells. Fix: write the nodeset as libvirt does, e.g. 0 or 0-1,3".into()],
        ),
    ];
    for (what, xml, expected) in cases {
        let mut want = vec![pinned.to_owned()];
        want.extend(expected);
        assert_eq!(memory_lines(&host, &xml), want, "{what}");
    }
    // Without a default huge page size (no line, or 0 kB), a <page> without a size
    // cannot be met.
    for hugepagesize in ["", "Hugepagesize:          0 kB\n"] {
        integration_tests::write_file(
            &host.path("proc/meminfo"),
            format!("MemTotal:       67108864 kB\nMemFree:        1024 kB\n{hugepagesize}"),
        );
        assert_eq!(
            memory_lines(&host, &gpu_domain(8, &hugepages(""))),
            [
                pinned.to_owned(),
                "FAIL hugepages: the VM asks for huge pages of the default size, and the host has none. Fix: reserve huge pages (hugepagesz=1G hugepages=N on the kernel command line)".to_owned()
            ],
            "{hugepagesize:?}"
        );
    }
}

#[test]
fn bookings_are_checked_for_nova_gpu_domains_as_the_mode_says() {
    use host_model::checks::check_bookings;
    use host_model::config::{BookingsConfig, BookingsMode};
    use integration_tests::host::BOOKINGS;
    let host = host();
    let bookings = host.path(BOOKINGS);
    integration_tests::write_file(
        &bookings,
        r#"{"bookings": [
          {"id": "t", "project": "climate", "gpu": "0000:18:00.0", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"},
          {"id": "next", "project": "climate", "gpu": "0000:18:00.0", "start": "2026-11-05T00:00:00Z", "end": "2026-11-06T00:00:00Z"}
        ]}"#,
    );
    let nova = "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
                <nova:owner><nova:user uuid='u1'>alice</nova:user><nova:project uuid='p1'>climate</nova:project>\
                </nova:owner></nova:instance></metadata>";
    let titan = Domain::from_xml(&gpu_domain(8, nova)).expect("domain");
    let plain = Domain::from_xml(&gpu_domain(8, "")).expect("domain");
    let config = |mode| BookingsConfig {
        mode,
        file: bookings.clone(),
        match_user: false,
    };
    let lines = |findings: Option<Vec<host_model::checks::Finding>>| {
        let mut names = host_model::checks::DeviceNames::new(&paths(&host));
        findings.map(|f| f.iter().map(|f| f.line(&mut names)).collect::<Vec<_>>())
    };
    let at = |t: &str| t.parse::<jiff::Timestamp>().expect("time");
    let check = |domain: &Domain, mode, now: &str| {
        lines(check_bookings(
            domain,
            &paths(&host),
            &config(mode),
            &bookings,
            None,
            "gpu-node-1",
            at(now),
        ))
    };
    let titan_xp = "0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp])";
    let uncovered = |severity: &str| {
        Some(vec![format!(
            "{severity} booking: {titan_xp}: project 'climate' has no booking that covers this GPU now: none of the project's bookings for it covers now. Fix: start it within a booking of the project; its next one that would cover it: next (climate, 0000:18:00.0, 2026-11-05T00:00:00Z to 2026-11-06T00:00:00Z)"
        )])
    };
    assert_eq!(
        check(&titan, BookingsMode::Enforce, "2026-11-01T12:00:00Z"),
        Some(vec![])
    );
    assert_eq!(
        check(&titan, BookingsMode::Enforce, "2026-11-03T00:00:00Z"),
        uncovered("FAIL")
    );
    assert_eq!(
        check(&titan, BookingsMode::Warn, "2026-11-03T00:00:00Z"),
        uncovered("WARN")
    );
    assert_eq!(
        check(&titan, BookingsMode::Off, "2026-11-03T00:00:00Z"),
        Some(vec![])
    );
    // Not Nova's: not subject to bookings.
    assert_eq!(
        check(&plain, BookingsMode::Enforce, "2026-11-03T00:00:00Z"),
        None
    );
    // A broken file refuses (enforce) or warns (warn), naming it.
    integration_tests::write_file(&bookings, "{\"bookings\": [");
    assert_eq!(
        check(&titan, BookingsMode::Warn, "2026-11-03T00:00:00Z"),
        Some(vec![format!(
            "WARN booking: the bookings file cannot be used, so no GPU start can be checked: {}: line 1, column 14: EOF while parsing a list; expected {{\"bookings\": [{{\"id\", \"project\", \"start\", \"end\", ...}}]}}. Fix: correct {} (or write it again: `gpu-passthrough bookings import`)",
            bookings.display(),
            bookings.display()
        )])
    );
    let enforce = check(&titan, BookingsMode::Enforce, "2026-11-03T00:00:00Z").expect("nova");
    assert_eq!(enforce.len(), 1);
    assert!(
        enforce[0].starts_with("FAIL booking: the bookings file cannot be used")
            && enforce[0].ends_with(", or set [bookings] mode = \"warn\""),
        "{enforce:?}"
    );
}
