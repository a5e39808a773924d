//! Device names from the host's pci.ids (hwdata), for messages.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Where distributions put pci.ids: EL (hwdata), Debian (pci.ids), others.
pub const DEFAULT_PATHS: &[&str] = &[
    "/usr/share/hwdata/pci.ids",
    "/usr/share/misc/pci.ids",
    "/usr/share/pci.ids",
];
/// Environment variable naming the pci.ids file to use (tests, unusual hosts).
pub const PATH_ENV: &str = "GPU_PASSTHROUGH_PCI_IDS";

/// The pci.ids file in force, if the host has one.
pub fn path_from_env() -> Option<PathBuf> {
    crate::env_path(PATH_ENV).or_else(|| {
        DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// `Vendor Device` name of `vendor:device` from the pci.ids text, e.g.
/// `NVIDIA Corporation GP102 [TITAN Xp]`; the vendor alone when the device is unknown.
pub fn lookup_in(text: &str, vendor: u16, device: u16) -> Option<String> {
    let vendor_key = format!("{vendor:04x}");
    let device_key = format!("\t{device:04x}");
    let mut lines = text.lines();
    let vendor_name = lines.by_ref().find_map(|line| {
        let rest = line.strip_prefix(vendor_key.as_str())?;
        rest.starts_with("  ").then(|| rest.trim().to_owned())
    })?;
    for line in lines {
        if !line.starts_with('\t') && !line.starts_with('#') && !line.is_empty() {
            break; // the next vendor
        }
        if let Some(rest) = line.strip_prefix(device_key.as_str()) {
            if rest.starts_with("  ") {
                return Some(format!("{vendor_name} {}", rest.trim()));
            }
        }
    }
    Some(vendor_name)
}

/// A pci.ids file, read at most once, at the first lookup; clones share what was read,
/// so the checks' messages and the ledger's record of one hook call read it once.
#[derive(Debug, Clone, Default)]
pub struct PciIds {
    path: Option<PathBuf>,
    text: Rc<OnceCell<Option<String>>>,
}

impl PciIds {
    /// The file at `path` (`None`: no names).
    pub fn at(path: Option<PathBuf>) -> Self {
        PciIds {
            path,
            text: Rc::default(),
        }
    }

    /// The host's file, as [`path_from_env`] finds it.
    pub fn from_env() -> Self {
        PciIds::at(path_from_env())
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `Vendor Device` name, as [`lookup_in`]; `None` without a readable file.
    pub fn name(&self, vendor: u16, device: u16) -> Option<String> {
        let text = self.text.get_or_init(|| {
            let bytes = std::fs::read(self.path.as_deref()?).ok()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        });
        lookup_in(text.as_deref()?, vendor, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n10de  NVIDIA Corporation\n\t1b02  GP102 [TITAN Xp]\n\t\t10de 11df  TITAN Xp\n\t10ef  GP102 HDMI Audio Controller\n10df  Emulex Corporation\n\t1b02  Not this one\n";

    #[test]
    fn finds_vendor_and_device() {
        assert_eq!(
            lookup_in(IDS, 0x10de, 0x1b02).as_deref(),
            Some("NVIDIA Corporation GP102 [TITAN Xp]")
        );
        assert_eq!(
            lookup_in(IDS, 0x10de, 0x10ef).as_deref(),
            Some("NVIDIA Corporation GP102 HDMI Audio Controller")
        );
        assert_eq!(
            lookup_in(IDS, 0x10de, 0x9999).as_deref(),
            Some("NVIDIA Corporation")
        );
        assert_eq!(
            lookup_in(IDS, 0x10df, 0x1b02).as_deref(),
            Some("Emulex Corporation Not this one")
        );
        assert_eq!(lookup_in(IDS, 0x8086, 0x1572), None);
    }

    #[test]
    fn comments_and_blank_lines_inside_a_vendor_do_not_end_it() {
        let ids = "10de  NVIDIA Corporation\n\t10ef  GP102 HDMI Audio Controller\n# 2024 additions\n\n\t1b02  GP102 [TITAN Xp]\n10df  Emulex Corporation\n";
        assert_eq!(
            lookup_in(ids, 0x10de, 0x1b02).as_deref(),
            Some("NVIDIA Corporation GP102 [TITAN Xp]")
        );
        // A subsystem line ("\t\t10de 11df") is not a device of that id.
        assert_eq!(
            lookup_in(IDS, 0x10de, 0x11df).as_deref(),
            Some("NVIDIA Corporation")
        );
    }

    #[test]
    fn the_file_is_the_environments_else_the_first_the_host_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pci.ids");
        std::fs::write(&path, IDS).expect("write");
        // The only unit test that touches this variable.
        std::env::set_var(PATH_ENV, &path);
        assert_eq!(path_from_env(), Some(path.clone()));
        let ids = PciIds::from_env();
        assert_eq!(ids.path(), Some(path.as_path()));
        assert_eq!(
            ids.name(0x10de, 0x1b02).as_deref(),
            Some("NVIDIA Corporation GP102 [TITAN Xp]")
        );
        std::env::remove_var(PATH_ENV);
        let host = DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        assert_eq!(path_from_env(), host);
        assert_eq!(PciIds::at(None).name(0x10de, 0x1b02), None);
        assert_eq!(
            PciIds::at(Some(dir.path().join("none"))).name(0x10de, 0x1b02),
            None
        );
    }
}
