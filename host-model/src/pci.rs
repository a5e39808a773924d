//! PCI functions as sysfs shows them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A PCI function's address, `DDDD:BB:DD.F` (domain, bus, device, function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Usually 0; Intel VMD puts devices in domains of 0x10000 and above.
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// This function's directory: `SYSFS/bus/pci/devices/DDDD:BB:DD.F`.
    pub fn sysfs_dir(&self, sysfs: &Path) -> PathBuf {
        sysfs.join("bus/pci/devices").join(self.to_string())
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPciAddress(pub String);

impl fmt::Display for BadPciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a PCI address (expected DDDD:BB:DD.F or BB:DD.F in hex, e.g. 0000:18:00.0)",
            self.0
        )
    }
}

impl std::error::Error for BadPciAddress {}

impl FromStr for PciAddress {
    type Err = BadPciAddress;

    /// Parse `DDDD:BB:DD.F` or the short `BB:DD.F` (domain 0) that QEMU also takes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPciAddress(s.to_owned());
        let hex = |part: &str, max: u32| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok().filter(|v| *v <= max)
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let mut parts = rest.rsplitn(3, ':');
        let device = parts.next().ok_or_else(bad)?;
        let bus = parts.next().ok_or_else(bad)?;
        let domain = parts.next().unwrap_or("0");
        Ok(PciAddress {
            domain: hex(domain, u32::MAX).ok_or_else(bad)?,
            bus: hex(bus, 0xff).ok_or_else(bad)? as u8,
            device: hex(device, 0x1f).ok_or_else(bad)? as u8,
            function: hex(function, 0x7).ok_or_else(bad)? as u8,
        })
    }
}

/// PCI base class 0x03: display controller (VGA, 3D, other display).
pub const CLASS_DISPLAY: u8 = 0x03;

/// A function's 24-bit class code (base class, subclass, programming interface),
/// from `SYSFS/bus/pci/devices/ADDR/class`, which holds e.g. `0x030000`.
pub fn read_class(sysfs: &Path, address: &PciAddress) -> io::Result<u32> {
    read_hex_file(&address.sysfs_dir(sysfs).join("class"), "a hex class code")
}

/// A sysfs attribute that holds one hex number, `0x` or not (`class`, `vendor`,
/// `device`); anything else is an error naming the file, what it holds and `what` it
/// should hold.
fn read_hex_file(path: &Path, what: &str) -> io::Result<u32> {
    // The error keeps its kind (NotFound stays NotFound) and names the file.
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let t = text.trim();
    let digits = t.strip_prefix("0x").unwrap_or(t);
    let valid =
        !digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| u32::from_str_radix(digits, 16).ok())
        .flatten()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds {t:?}, not {what}", path.display()),
            )
        })
}

/// The base class of a 24-bit class code.
pub fn base_class(class: u32) -> u8 {
    (class >> 16) as u8
}

/// PCI class 0x0604: PCI-to-PCI bridge. VFIO lets bridges share a group with a
/// passed-through device.
pub fn is_pci_bridge(class: u32) -> bool {
    class >> 8 == 0x0604
}

/// One PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u32,
    /// The bound driver's name (the `driver` link), if any.
    pub driver: Option<String>,
    /// The IOMMU group number (the `iommu_group` link), if the IOMMU is on.
    pub iommu_group: Option<u32>,
    /// `sriov_totalvfs` > 0: a physical function that can have virtual functions.
    pub sriov_capable: bool,
    /// A `physfn` link: this is a virtual function.
    pub is_virtual_function: bool,
    /// `numa_node`; `None` for -1 or absent.
    pub numa_node: Option<u32>,
}

impl PciFunction {
    /// Read the function at `address` from `SYSFS/bus/pci/devices/ADDR`.
    pub fn read(sysfs: &Path, address: PciAddress) -> io::Result<PciFunction> {
        let dir = address.sysfs_dir(sysfs);
        let hex_file = |name: &str| read_hex_file(&dir.join(name), "a hex number");
        let link_name = |name: &str| {
            std::fs::read_link(dir.join(name))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        };
        let number_file = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
        };
        Ok(PciFunction {
            address,
            vendor_id: hex_file("vendor")? as u16,
            device_id: hex_file("device")? as u16,
            class: hex_file("class")?,
            driver: link_name("driver"),
            iommu_group: link_name("iommu_group").and_then(|n| n.parse().ok()),
            sriov_capable: number_file("sriov_totalvfs").is_some_and(|n| n > 0),
            is_virtual_function: dir.join("physfn").symlink_metadata().is_ok(),
            numa_node: number_file("numa_node")
                .filter(|n| *n >= 0)
                .map(|n| n as u32),
        })
    }

    /// `10de:1b02`
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.device_id)
    }
}

/// Whether a function exists at `address`.
pub fn exists(sysfs: &Path, address: &PciAddress) -> bool {
    address.sysfs_dir(sysfs).exists()
}

/// Every PCI function of the host, sorted by address. Entries of
/// `bus/pci/devices` that are not addresses are skipped.
pub fn list_addresses(sysfs: &Path) -> io::Result<Vec<PciAddress>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(sysfs.join("bus/pci/devices"))? {
        if let Ok(addr) = entry?.file_name().to_string_lossy().parse() {
            found.push(addr);
        }
    }
    found.sort();
    Ok(found)
}

/// The members of IOMMU group `group`, from `SYSFS/kernel/iommu_groups/N/devices`.
pub fn iommu_group_members(sysfs: &Path, group: u32) -> io::Result<Vec<PciAddress>> {
    let dir = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Ok(addr) = entry?.file_name().to_string_lossy().parse() {
            found.push(addr);
        }
    }
    found.sort();
    Ok(found)
}

/// Whether the kernel has put devices into IOMMU groups: the IOMMU is on.
pub fn iommu_active(sysfs: &Path) -> bool {
    std::fs::read_dir(sysfs.join("kernel/iommu_groups"))
        .is_ok_and(|mut entries| entries.next().is_some())
}

/// What sysfs shows of a function's health, without waking it: a GPU bound to
/// vfio-pci and idle sits in D3hot; one in D3cold must not be touched (its config space
/// reads would wake it), so its link is not read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// `power_state` as sysfs spells it: D0, D1, D2, D3hot, D3cold, unknown.
    pub power_state: Option<String>,
    /// (current, max) link speed in GT/s and width in lanes, when readable.
    pub link_speed_gts: Option<(f64, f64)>,
    pub link_width: Option<(u32, u32)>,
    /// AER totals: (severity, count), severity `correctable`, `nonfatal`, `fatal`.
    pub aer: Vec<(&'static str, u64)>,
}

/// The power states sysfs names, in order.
pub const POWER_STATES: [&str; 6] = ["D0", "D1", "D2", "D3hot", "D3cold", "unknown"];

/// Read what sysfs shows of `address`'s health. Missing files are absent values.
pub fn read_health(sysfs: &Path, address: &PciAddress) -> Health {
    let dir = address.sysfs_dir(sysfs);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let power_state = read("power_state");
    let mut health = Health {
        power_state: power_state.clone(),
        ..Health::default()
    };
    if power_state.as_deref() != Some("D3cold") {
        // "8.0 GT/s PCIe", "Unknown" when the link is down.
        let speed = |name: &str| {
            read(name).and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
            })
        };
        let width = |name: &str| read(name).and_then(|s| s.parse::<u32>().ok());
        health.link_speed_gts = speed("current_link_speed").zip(speed("max_link_speed"));
        health.link_width = width("current_link_width").zip(width("max_link_width"));
    }
    for (file, total, severity) in [
        ("aer_dev_correctable", "TOTAL_ERR_COR", "correctable"),
        ("aer_dev_nonfatal", "TOTAL_ERR_NONFATAL", "nonfatal"),
        ("aer_dev_fatal", "TOTAL_ERR_FATAL", "fatal"),
    ] {
        let count = read(file).and_then(|text| {
            text.lines().find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(total))
                    .then(|| words.next().and_then(|n| n.parse().ok()))
                    .flatten()
            })
        });
        if let Some(count) = count {
            health.aer.push((severity, count));
        }
    }
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function directory as the kernel makes one, under `sysfs`.
    fn function(sysfs: &Path, address: &str, files: &[(&str, &str)], links: &[(&str, &str)]) {
        let dir = sysfs.join("bus/pci/devices").join(address);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        for (name, target) in links {
            std::os::unix::fs::symlink(target, dir.join(name)).expect("symlink");
        }
    }

    #[test]
    fn reads_a_function_whole_from_sysfs() {
        let sysfs = tempfile::tempdir().expect("tempdir");
        let s = sysfs.path();
        function(
            s,
            "0000:18:00.0",
            &[
                ("vendor", "0x10de\n"),
                ("device", "0x1b02\n"),
                ("class", "0x030000\n"),
                ("sriov_totalvfs", "0\n"),
                ("numa_node", "1\n"),
            ],
            &[
                ("driver", "../../../bus/pci/drivers/vfio-pci"),
                ("iommu_group", "../../../kernel/iommu_groups/30"),
            ],
        );
        function(
            s,
            "0000:3b:00.1",
            &[
                ("vendor", "0x8086\n"),
                ("device", "0x1572\n"),
                ("class", "0x020000\n"),
                ("sriov_totalvfs", "64\n"),
                ("numa_node", "-1\n"),
            ],
            &[("physfn", "../0000:3b:00.0")],
        );
        let gpu = PciFunction::read(s, "0000:18:00.0".parse().expect("address")).expect("read");
        assert_eq!(
            gpu,
            PciFunction {
                address: "0000:18:00.0".parse().expect("address"),
                vendor_id: 0x10de,
                device_id: 0x1b02,
                class: 0x030000,
                driver: Some("vfio-pci".into()),
                iommu_group: Some(30),
                sriov_capable: false,
                is_virtual_function: false,
                numa_node: Some(1),
            }
        );
        assert_eq!(gpu.ids(), "10de:1b02");
        let vf = PciFunction::read(s, "0000:3b:00.1".parse().expect("address")).expect("read");
        assert_eq!(
            (
                vf.driver,
                vf.iommu_group,
                vf.sriov_capable,
                vf.is_virtual_function,
                vf.numa_node
            ),
            (None, None, true, true, None)
        );
        // numa_node 0 is a node, not "none".
        std::fs::write(s.join("bus/pci/devices/0000:3b:00.1/numa_node"), "0\n").expect("write");
        let vf = PciFunction::read(s, "0000:3b:00.1".parse().expect("address")).expect("read");
        assert_eq!(vf.numa_node, Some(0));
        // Hex attributes: 0x or not, at most 8 digits, nothing else.
        for (text, ok) in [
            ("10de", true),
            ("0x", false),
            ("0x000000001", false),
            ("0x1g", false),
        ] {
            std::fs::write(s.join("bus/pci/devices/0000:3b:00.1/vendor"), text).expect("write");
            let got = PciFunction::read(s, "0000:3b:00.1".parse().expect("address"));
            assert_eq!(got.is_ok(), ok, "{text:?}: {got:?}");
        }
    }

    #[test]
    fn lists_functions_groups_and_bridges() {
        let sysfs = tempfile::tempdir().expect("tempdir");
        let s = sysfs.path();
        assert!(!iommu_active(s), "no iommu_groups directory");
        for a in ["0000:3b:00.0", "0000:18:00.1", "0000:18:00.0"] {
            function(s, a, &[], &[]);
        }
        std::fs::create_dir_all(s.join("bus/pci/devices/not-an-address")).expect("mkdir");
        let listed: Vec<String> = list_addresses(s)
            .expect("list")
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(listed, ["0000:18:00.0", "0000:18:00.1", "0000:3b:00.0"]);
        assert!(exists(s, &"18:00.1".parse().expect("address")));
        assert!(!exists(s, &"18:00.2".parse().expect("address")));

        std::fs::create_dir_all(s.join("kernel/iommu_groups")).expect("mkdir");
        assert!(!iommu_active(s), "an empty iommu_groups directory");
        let group = s.join("kernel/iommu_groups/30/devices");
        std::fs::create_dir_all(&group).expect("mkdir");
        for a in ["0000:18:00.1", "0000:18:00.0"] {
            std::os::unix::fs::symlink(format!("../../../../bus/pci/devices/{a}"), group.join(a))
                .expect("symlink");
        }
        assert!(iommu_active(s));
        let members: Vec<String> = iommu_group_members(s, 30)
            .expect("members")
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(members, ["0000:18:00.0", "0000:18:00.1"]);
        assert!(iommu_group_members(s, 31).is_err());

        assert!(is_pci_bridge(0x060400));
        assert!(is_pci_bridge(0x060401));
        assert!(!is_pci_bridge(0x060000), "a host bridge");
        assert!(!is_pci_bridge(0x030000));
    }

    #[test]
    fn parses_long_and_short_forms() {
        let long: PciAddress = "0000:18:00.0".parse().expect("long form");
        let short: PciAddress = "18:00.0".parse().expect("short form");
        assert_eq!(long, short);
        assert_eq!(long.to_string(), "0000:18:00.0");
        let vmd: PciAddress = "10000:E1:1f.7".parse().expect("vmd domain");
        assert_eq!(vmd.to_string(), "10000:e1:1f.7");
        let widest: PciAddress = "ffffffff:ff:1f.7".parse().expect("8 hex digits of domain");
        assert_eq!(widest.to_string(), "ffffffff:ff:1f.7");
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "18:00",
            "18.0",
            "0000:18:20.0",
            "0000:18:00.8",
            "0000:118:00.0",
            "zz:00.0",
            "0000:18:00.0.1",
            "1:2:3:4.0",
            " 18:00.0",
            "+18:00.0",
            "000000000:18:00.0",
        ] {
            let err = bad.parse::<PciAddress>().expect_err(bad);
            assert!(err.to_string().contains("not a PCI address"), "{bad}");
        }
    }

    #[test]
    fn health_from_sysfs_and_no_link_reads_in_d3cold() {
        let sysfs = tempfile::tempdir().expect("tempdir");
        let addr: PciAddress = "0000:18:00.0".parse().expect("address");
        let dir = addr.sysfs_dir(sysfs.path());
        std::fs::create_dir_all(&dir).expect("mkdir");
        let w = |n: &str, v: &str| std::fs::write(dir.join(n), v).expect("write");
        w("power_state", "D3hot\n");
        w("current_link_speed", "2.5 GT/s PCIe\n");
        w("max_link_speed", "8.0 GT/s PCIe\n");
        w("current_link_width", "8\n");
        w("max_link_width", "16\n");
        w(
            "aer_dev_correctable",
            "RxErr 2\nBadTLP 1\nTOTAL_ERR_COR 3\n",
        );
        w("aer_dev_fatal", "Undefined 0\nTOTAL_ERR_FATAL 0\n");
        let h = read_health(sysfs.path(), &addr);
        assert_eq!(
            h,
            Health {
                power_state: Some("D3hot".into()),
                link_speed_gts: Some((2.5, 8.0)),
                link_width: Some((8, 16)),
                aer: vec![("correctable", 3), ("fatal", 0)],
            }
        );
        w("power_state", "D3cold\n");
        let h = read_health(sysfs.path(), &addr);
        assert_eq!((h.link_speed_gts, h.link_width), (None, None));
    }

    #[test]
    fn reads_class_from_sysfs() {
        let sysfs = tempfile::tempdir().expect("tempdir");
        let addr: PciAddress = "0000:18:00.0".parse().expect("address");
        let dir = addr.sysfs_dir(sysfs.path());
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("class"), "0x030200\n").expect("write");
        let class = read_class(sysfs.path(), &addr).expect("class");
        assert_eq!(class, 0x030200);
        assert_eq!(base_class(class), CLASS_DISPLAY);
        std::fs::write(dir.join("class"), "garbage\n").expect("write");
        let err = read_class(sysfs.path(), &addr).expect_err("garbage");
        assert!(err.to_string().contains("not a hex class code"), "{err}");
    }
}
