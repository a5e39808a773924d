//! What the gpu-passthrough binaries know about a host.
//!
//! Every reader takes the root it reads from (`/sys`, `/proc`, a config path) so that
//! tests can hand it a fake tree; production passes the real paths, which
//! [`sysfs_root_from_env`] and [`config::path_from_env`] resolve.

#[cfg(feature = "host")]
pub mod bookings;
#[cfg(feature = "host")]
pub mod checks;
pub mod config;
#[cfg(feature = "host")]
pub mod domain;
#[cfg(feature = "host")]
pub mod ledger;
#[cfg(feature = "host")]
pub mod libvirt;
#[cfg(feature = "host")]
pub mod mapped;
#[cfg(feature = "host")]
pub mod memory;
pub mod pci;
#[cfg(feature = "host")]
pub mod pciids;
#[cfg(feature = "host")]
pub mod procfs;

use std::path::PathBuf;

/// The path an override variable names: `None` when it is unset or empty.
pub fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// For `map_err`: the error of reading `path`, naming it (`cannot read PATH: ERROR`),
/// its kind kept.
#[cfg(feature = "host")]
pub(crate) fn cannot_read(
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
}

/// Environment variable that replaces `/sys` (tests, unusual hosts).
pub const SYSFS_ENV: &str = "GPU_PASSTHROUGH_SYSFS";

/// The sysfs root in force: `$GPU_PASSTHROUGH_SYSFS`, else `/sys`.
pub fn sysfs_root_from_env() -> PathBuf {
    env_path(SYSFS_ENV).unwrap_or_else(|| PathBuf::from("/sys"))
}

/// Environment variable that replaces `/proc` (tests, unusual hosts).
pub const PROC_ENV: &str = "GPU_PASSTHROUGH_PROC";

/// The procfs root in force: `$GPU_PASSTHROUGH_PROC`, else `/proc`.
pub fn proc_root_from_env() -> PathBuf {
    env_path(PROC_ENV).unwrap_or_else(|| PathBuf::from("/proc"))
}

/// Bytes that every qemu-kvm-wrapper binary carries, by which the installer tells the
/// wrapper from a real qemu at /usr/libexec/qemu-kvm, whatever the wrapper's version.
pub const WRAPPER_MARKER: &str = "gpu-passthrough:qemu-kvm-wrapper:marker:v1";

/// Whether the file content `bytes` is a qemu-kvm-wrapper binary.
pub fn is_wrapper_binary(bytes: &[u8]) -> bool {
    let marker = WRAPPER_MARKER.as_bytes();
    bytes.windows(marker.len()).any(|w| w == marker)
}

/// Whether the file at `path` is a qemu-kvm-wrapper binary, read in pieces (a real
/// qemu is tens of megabytes, a debug wrapper too).
pub fn file_is_wrapper(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let marker = WRAPPER_MARKER.as_bytes();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    // The last marker.len() - 1 bytes of a piece stay, so a marker across two is found.
    let keep = marker.len() - 1;
    let mut filled = 0;
    loop {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(false);
        }
        filled += n;
        if is_wrapper_binary(&buf[..filled]) {
            return Ok(true);
        }
        if filled > keep {
            buf.copy_within(filled - keep..filled, 0);
            filled = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_wherever_it_lies_in_a_large_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = WRAPPER_MARKER.as_bytes();
        let piece = 1 << 20;
        let cases: [(&str, Option<usize>); 5] = [
            ("at the start", Some(0)),
            ("across the first piece's end", Some(piece - 10)),
            (
                "across the second piece's end",
                Some(2 * piece - marker.len() + 1),
            ),
            ("at the very end", Some(3 * piece - marker.len())),
            ("nowhere", None),
        ];
        for (what, at) in cases {
            let mut bytes = vec![0x5au8; 3 * piece];
            if let Some(at) = at {
                bytes[at..at + marker.len()].copy_from_slice(marker);
            }
            let path = dir.path().join("qemu-kvm");
            std::fs::write(&path, &bytes).expect("write");
            assert_eq!(
                file_is_wrapper(&path).expect("read"),
                at.is_some(),
                "{what}"
            );
            assert_eq!(is_wrapper_binary(&bytes), at.is_some(), "{what}");
        }
        // Only a part of the marker, at the end: not the wrapper.
        let path = dir.path().join("partial");
        std::fs::write(&path, &marker[..marker.len() - 1]).expect("write");
        assert!(!file_is_wrapper(&path).expect("read"));
        std::fs::write(&path, b"").expect("write");
        assert!(!file_is_wrapper(&path).expect("read"));
        let missing = file_is_wrapper(&dir.path().join("none")).expect_err("no file");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn the_roots_come_from_the_environment_unless_unset_or_empty() {
        // The only test that touches these variables.
        std::env::set_var(SYSFS_ENV, "/tmp/fake-sys");
        std::env::set_var(PROC_ENV, "/tmp/fake-proc");
        assert_eq!(sysfs_root_from_env(), PathBuf::from("/tmp/fake-sys"));
        assert_eq!(proc_root_from_env(), PathBuf::from("/tmp/fake-proc"));
        std::env::set_var(SYSFS_ENV, "");
        std::env::remove_var(PROC_ENV);
        assert_eq!(sysfs_root_from_env(), PathBuf::from("/sys"));
        assert_eq!(proc_root_from_env(), PathBuf::from("/proc"));
        assert_eq!(env_path(SYSFS_ENV), None);
        std::env::remove_var(SYSFS_ENV);
    }
}
