//! Writing files so that a crash or a full disk never leaves one half-written: a temp
//! file in the same directory, fsync, rename, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A temp path beside `path`, unique to this process.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.gpu-passthrough-{}", std::process::id()))
}

/// Fsync the directory holding `path`, so that a rename in it survives a crash.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Replace `path` with `content` atomically, with permission bits `mode`.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        // The umask may have cut bits from `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
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
pub fn link_or_copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = temp_beside(to);
    let _ = fs::remove_file(&tmp);
    let result = fs::hard_link(from, &tmp)
        .or_else(|_| {
            fs::copy(from, &tmp)?;
            File::open(&tmp)?.sync_all()
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
