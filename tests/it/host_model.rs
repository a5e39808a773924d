//! host-model's sysfs readers on fake trees built by the shared fixture helper.

use host_model::pci::{self, PciAddress, PciFunction};
use integration_tests::{write_file, write_link, FakeSysfs, PciFunction as Fake};

fn addr(s: &str) -> PciAddress {
    s.parse().expect("address")
}

#[test]
fn reads_ids_class_driver_group_numa_and_sriov() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sysfs = FakeSysfs::new(dir.path());
    sysfs.add(&Fake {
        address: "0000:3b:00.0",
        vendor: 0x10de,
        device: 0x2236,
        class: 0x030200,
        driver: Some("nvidia"),
        iommu_group: Some(12),
    });
    let pf = sysfs.device_dir("0000:3b:00.0");
    write_file(&pf.join("sriov_totalvfs"), "16\n");
    write_file(&pf.join("numa_node"), "1\n");
    sysfs.add(&Fake {
        address: "0000:3b:00.4",
        vendor: 0x10de,
        device: 0x2236,
        class: 0x030200,
        driver: None,
        iommu_group: Some(13),
    });
    let vf = sysfs.device_dir("0000:3b:00.4");
    write_link(&vf.join("physfn"), "../0000:3b:00.0");
    write_file(&vf.join("numa_node"), "-1\n");

    let f = PciFunction::read(dir.path(), addr("3b:00.0")).expect("pf");
    assert_eq!(f.ids(), "10de:2236");
    assert_eq!(f.class, 0x030200);
    assert_eq!(f.driver.as_deref(), Some("nvidia"));
    assert_eq!(f.iommu_group, Some(12));
    assert!(f.sriov_capable && !f.is_virtual_function);
    assert_eq!(f.numa_node, Some(1));
    let v = PciFunction::read(dir.path(), addr("3b:00.4")).expect("vf");
    assert!(v.is_virtual_function && !v.sriov_capable);
    assert_eq!((v.driver, v.numa_node), (None, None));

    assert!(pci::iommu_active(dir.path()));
    assert_eq!(
        pci::iommu_group_members(dir.path(), 12).expect("group"),
        vec![addr("3b:00.0")]
    );
    assert_eq!(
        pci::list_addresses(dir.path()).expect("list"),
        vec![addr("3b:00.0"), addr("3b:00.4")]
    );
}

#[test]
fn sysfs_oddities_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sysfs = FakeSysfs::new(dir.path());
    sysfs.add(&Fake {
        address: "0000:18:00.0",
        vendor: 0x10de,
        device: 0x1b02,
        class: 0x030000,
        driver: None,
        iommu_group: None,
    });
    write_file(
        &sysfs.device_dir("0000:18:00.0").join("vendor"),
        "nvidia?\n",
    );
    let err = PciFunction::read(dir.path(), addr("18:00.0")).expect_err("bad vendor");
    assert!(
        err.to_string().contains("vendor holds \"nvidia?\""),
        "{err}"
    );
    assert!(!pci::iommu_active(dir.path()), "no groups: IOMMU off");
    let err = PciFunction::read(dir.path(), addr("19:00.0")).expect_err("missing");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
