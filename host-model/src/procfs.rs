//! /proc readers other than memory: the kernel command line, the CPU.

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

/// What /proc/cpuinfo says of the CPU that matters here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cpu {
    /// `vendor_id`: `GenuineIntel`, `AuthenticAMD`.
    pub vendor: Option<String>,
    /// The `vmx` or `svm` flag: hardware virtualization is there (and not hidden).
    pub virtualization: bool,
}

/// The first CPU of PROC/cpuinfo; an unreadable file says nothing.
pub fn cpu(proc_root: &Path) -> Cpu {
    let text = std::fs::read_to_string(proc_root.join("cpuinfo")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let flags = field("flags").unwrap_or_default();
    Cpu {
        vendor: field("vendor_id"),
        virtualization: flags.split_whitespace().any(|f| f == "vmx" || f == "svm"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_its_words_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("cmdline"),
            "BOOT_IMAGE=(hd0,gpt2)/vmlinuz ro  crashkernel=auto\tquiet\n",
        )
        .expect("write");
        assert_eq!(
            kernel_cmdline(dir.path()).expect("read"),
            [
                "BOOT_IMAGE=(hd0,gpt2)/vmlinuz",
                "ro",
                "crashkernel=auto",
                "quiet"
            ]
        );
        let missing = kernel_cmdline(&dir.path().join("none")).expect_err("no file");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

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

    #[test]
    fn the_first_cpus_vendor_and_whether_it_virtualizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("cpuinfo"),
            "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse\n\nprocessor\t: 1\nvendor_id\t: Other\n",
        )
        .expect("write");
        assert_eq!(
            cpu(dir.path()),
            Cpu {
                vendor: Some("GenuineIntel".into()),
                virtualization: true
            }
        );
        std::fs::write(
            dir.path().join("cpuinfo"),
            "vendor_id : AuthenticAMD\nflags : fpu svmx\n",
        )
        .expect("write");
        assert_eq!(
            cpu(dir.path()),
            Cpu {
                vendor: Some("AuthenticAMD".into()),
                virtualization: false
            }
        );
        assert_eq!(cpu(&dir.path().join("none")), Cpu::default());
    }
}
