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
