//! /proc readers other than memory: the kernel command line.

use std::io;
use std::path::Path;

/// The words of `PROC/cmdline`.
pub fn kernel_cmdline(proc_root: &Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(proc_root.join("cmdline"))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// Whether `param` is on the command line, as `param` or `param=value` for any value
/// when `value` is `None`. Whole words only: `iommu` never matches `intel_iommu=on`.
pub fn has_param(cmdline: &[String], param: &str, value: Option<&str>) -> bool {
    cmdline.iter().any(|word| {
        let (key, val) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        key == param && (value.is_none() || val == value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words() {
        let cmdline: Vec<String> =
            "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt rd.driver.pre=vfio-pci"
                .split(' ')
                .map(str::to_owned)
                .collect();
        assert!(has_param(&cmdline, "intel_iommu", Some("on")));
        assert!(has_param(&cmdline, "iommu", Some("pt")));
        assert!(!has_param(&cmdline, "iommu", Some("on")));
        assert!(has_param(&cmdline, "ro", None));
        assert!(!has_param(&cmdline, "amd_iommu", None));
        assert!(!has_param(&cmdline, "rd.driver", None));
    }
}
