//! Writing files so that a crash or a full disk never leaves one half-written: a temp
//! file in the same directory, fsync, rename, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The temp path beside `path`: one fixed name per target, so that what a killed run
/// left there is found and replaced by the next (installer runs hold the lock).
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.gpu-passthrough-tmp"))
}

/// Remove what an interrupted run left beside `path`: the temp file, and the
/// per-process temp files (`.NAME.gpu-passthrough-PID`) of earlier versions.
fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.gpu-passthrough-");
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = file_name.strip_prefix(&prefix) {
            if rest == "tmp" || rest.bytes().all(|b| b.is_ascii_digit()) {
                let p = entry.path();
                let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
            }
        }
    }
}

/// Fsync the directory holding `path`, so that a rename in it survives a crash.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Replace `path` with `content` atomically, with permission bits `mode`. The new
/// file carries the SELinux label of the file it replaces from before the rename:
/// a file created in /usr/libexec is `bin_t`, which libvirt's qemu domain cannot
/// enter, so qemu-kvm must never be that, not even for an instant.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_beside(path);
    remove_stale_temps(path);
    let result = (|| {
        let label = crate::selinux::label_of(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        // The umask may have cut bits from `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(label) = &label {
            crate::selinux::set_label(&file, label, path)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir_of(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Make `to` a second name of `from`'s content, atomically replacing `to`: a hard link
/// where the file system allows it, else a copy.
/// A hard link shares the inode, label included; a copy gets `from`'s label.
pub fn link_or_copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = temp_beside(to);
    remove_stale_temps(to);
    let result = fs::hard_link(from, &tmp)
        .or_else(|_| {
            fs::copy(from, &tmp)?;
            let file = File::open(&tmp)?;
            if let Some(label) = crate::selinux::label_of(from)? {
                crate::selinux::set_label(&file, &label, to)?;
            }
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, to))
        .and_then(|()| sync_dir_of(to));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot make {} a copy of {}: {e}",
                to.display(),
                from.display()
            ),
        )
    })
}

/// `path` inside `root` (`/usr/libexec/qemu-kvm` under `/tmp/r` is `/tmp/r/usr/libexec/qemu-kvm`).
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}
