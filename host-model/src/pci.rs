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
    let path = address.sysfs_dir(sysfs).join("class");
    let text = std::fs::read_to_string(&path)?;
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    u32::from_str_radix(digits, 16).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {:?}, not a hex class code",
                path.display(),
                text.trim()
            ),
        )
    })
}

/// The base class of a 24-bit class code.
pub fn base_class(class: u32) -> u8 {
    (class >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_long_and_short_forms() {
        let long: PciAddress = "0000:18:00.0".parse().expect("long form");
        let short: PciAddress = "18:00.0".parse().expect("short form");
        assert_eq!(long, short);
        assert_eq!(long.to_string(), "0000:18:00.0");
        let vmd: PciAddress = "10000:E1:1f.7".parse().expect("vmd domain");
        assert_eq!(vmd.to_string(), "10000:e1:1f.7");
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
        ] {
            let err = bad.parse::<PciAddress>().expect_err(bad);
            assert!(err.to_string().contains("not a PCI address"), "{bad}");
        }
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
