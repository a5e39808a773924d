//! SELinux file labels, as the `security.selinux` extended attribute holds them.
//!
//! libvirt starts qemu in `svirt_t`, which may only enter a `qemu_exec_t` file; a file
//! created in /usr/libexec is `bin_t`. So whatever replaces a file there must carry
//! the replaced file's label before it takes its name. Reading and writing the
//! attribute needs no SELinux on this machine: root can set it on ext4 and xfs, which
//! is how the tests see labels.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const XATTR: &[u8] = b"security.selinux\0";

/// The label of `path` itself (not a symlink's target), or `None` when it has none,
/// the file system keeps no labels, or the file does not exist.
pub fn label_of(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: c_path and XATTR are NUL-terminated; buf is writable for buf.len() bytes.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                XATTR.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA | libc::ENOTSUP | libc::ENOENT) => return Ok(None),
            _ => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot read the SELinux label of {}: {err}", path.display()),
                ))
            }
        }
    }
}

/// Give the open file `file` the label `label` (as [`label_of`] returned it).
pub fn set_label(file: &File, label: &[u8], shown_as: &Path) -> io::Result<()> {
    // SAFETY: the descriptor is open for the call's duration; XATTR is NUL-terminated;
    // label is readable for label.len() bytes.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr().cast(),
            label.as_ptr().cast(),
            label.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(io::Error::new(
        err.kind(),
        format!(
            "cannot give {} the SELinux label {}: {err}",
            shown_as.display(),
            String::from_utf8_lossy(label).trim_end_matches('\0')
        ),
    ))
}

/// The type of a label: `qemu_exec_t` in `system_u:object_r:qemu_exec_t:s0`.
pub fn label_type(label: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(label);
    let text = text.trim_end_matches('\0');
    text.split(':').nth(2).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_of_labels() {
        assert_eq!(
            label_type(b"system_u:object_r:qemu_exec_t:s0\0").as_deref(),
            Some("qemu_exec_t")
        );
        assert_eq!(
            label_type(b"system_u:object_r:bin_t:s0").as_deref(),
            Some("bin_t")
        );
        assert_eq!(label_type(b"garbage"), None);
    }

    #[test]
    fn a_label_round_trips_where_the_file_system_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        assert_eq!(label_of(&path).expect("read"), None);
        let label = b"system_u:object_r:qemu_exec_t:s0\0";
        match set_label(&file, label, &path) {
            Ok(()) => assert_eq!(label_of(&path).expect("read"), Some(label.to_vec())),
            // Not root, or a file system without security xattrs: nothing to see.
            Err(e) => eprintln!("SKIP: cannot set security.selinux here: {e}"),
        }
        assert_eq!(label_of(&dir.path().join("missing")).expect("read"), None);
    }
}
