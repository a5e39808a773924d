//! The hook's checks on fake hosts (the suite's sysfs trees), each report compared whole:
//! every finding's line, in order, devices described with their ids and names.

use host_model::checks::{check_domain, HostPaths, Severity};
use host_model::config::HookConfig;
use host_model::domain::Domain;
use host_model::pciids::PciIds;
use integration_tests::host::{HostRoot, LIBVIRT_RUN, PCI_IDS};
use integration_tests::PciFunction;

const GIB: u64 = 1 << 30;

fn f<'a>(
    address: &'a str,
    vendor: u16,
    device: u16,
    class: u32,
    driver: Option<&'a str>,
    group: Option<u32>,
) -> PciFunction<'a> {
    PciFunction {
        address,
        vendor,
        device,
        class,
        driver,
        iommu_group: group,
    }
}

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
        f(
            "0000:18:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("vfio-pci"),
            Some(30),
        ),
        f(
            "0000:18:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("vfio-pci"),
            Some(30),
        ),
        f(
            "0000:3b:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("nouveau"),
            Some(40),
        ),
        f(
            "0000:5e:00.0",
            0x10de,
            0x1e87,
            0x030000,
            Some("vfio-pci"),
            Some(50),
        ),
        f(
            "0000:5e:00.2",
            0x10de,
            0x1ad8,
            0x0c0330,
            Some("xhci_hcd"),
            Some(50),
        ),
        f(
            "0000:86:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            Some(60),
        ),
        f(
            "0000:85:00.0",
            0x8086,
            0x2030,
            0x060400,
            Some("pcieport"),
            Some(60),
        ),
        f(
            "0000:86:00.1",
            0x10de,
            0x10f8,
            0x040300,
            Some("pci-stub"),
            Some(60),
        ),
        f("0000:86:00.2", 0x10de, 0x1ad9, 0x0c8000, None, Some(60)),
        f(
            "0000:af:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            Some(70),
        ),
        f(
            "0000:af:00.1",
            0x10de,
            0x10f8,
            0x040300,
            Some("vfio-pci"),
            Some(70),
        ),
        f(
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
