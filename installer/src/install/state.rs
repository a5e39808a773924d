//! What install did, recorded so that uninstall can undo it: state.json, the backup
//! of each file before install changed it and the copy of what install left.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmdline::{self, Kind};
use crate::files::{under, write_atomic};

use super::*;

/// What install did, so that uninstall can undo it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallState {
    /// Files written (by install, or by grubby for it), in order, with what was there
    /// before and what install left.
    pub files: Vec<FileRecord>,
    /// Kernel arguments install added somewhere (grubby and GRUB_CMDLINE_LINUX).
    pub kernel_args: Vec<String>,
    /// Written by a version that records every command-line file per file (boot
    /// entries, grubenv, /etc/kernel/cmdline, /etc/default/grub), so that uninstall
    /// edits exactly those and never runs `grubby --remove-args`, which also strips
    /// arguments that were there before.
    #[serde(default)]
    pub exact: bool,
    /// The hook link install made.
    pub hook: Option<String>,
    /// Whether install diverted qemu-kvm (it was not diverted before).
    pub diverted: bool,
    /// Whether install enabled gpu-passthrough-metrics.timer.
    #[serde(default)]
    pub metrics_timer: bool,
    /// Directories install created (host paths), parents first.
    #[serde(default)]
    pub created_dirs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path on the host (without --root).
    pub path: String,
    /// The backup of the file as it was, under STATE_DIR/backup; `None`: it did not exist.
    pub backup: Option<String>,
    pub mode: Option<u32>,
    /// A copy of the file as install left it, under STATE_DIR/installed: a file that
    /// still holds exactly that comes back byte for byte; one edited since keeps the
    /// edits and loses only what install added.
    #[serde(default)]
    pub installed: Option<String>,
    /// For a kernel command-line file: the words install (or grubby for it) added to
    /// the command line, and the ones that went (grubby replaces `iommu=soft` when
    /// adding `iommu=pt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_words: Vec<String>,
}

pub(super) fn state_path(root: &Path) -> PathBuf {
    under(root, &format!("{STATE_DIR}/state.json"))
}

pub(super) fn read_state(root: &Path) -> Result<InstallState> {
    let path = state_path(root);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; restore it or remove it (uninstall then cannot undo)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstallState::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub(super) fn write_state(root: &Path, state: &InstallState) -> Result<()> {
    let path = state_path(root);
    fs::create_dir_all(path.parent().expect("state.json has a parent"))?;
    write_atomic(&path, &serde_json::to_vec_pretty(state)?, 0o644)?;
    Ok(())
}

/// Where the copy of `path` lives under STATE_DIR/`kind` (`backup`, `installed`).
pub(super) fn state_copy(root: &Path, kind: &str, path: &str) -> PathBuf {
    under(root, &format!("{STATE_DIR}/{kind}")).join(path.trim_start_matches('/'))
}

/// Record `path` (a host path) before install changes it: a backup of what is there,
/// unless an earlier install recorded it already (the first backup is the host as it
/// was before any install).
pub(super) fn record_before(host: &Run<'_>, state: &mut InstallState, path: &str) -> Result<()> {
    if state.files.iter().any(|r| r.path == path) {
        return Ok(());
    }
    let full = under(host.root, path);
    let backup = match fs::read(&full) {
        Ok(old) => {
            let b = state_copy(host.root, "backup", path);
            create_dirs(host.root, b.parent().expect("backup has a parent"), state)?;
            write_atomic(&b, &old, 0o600)?;
            Some(b.to_string_lossy().into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    state.files.push(FileRecord {
        path: path.to_owned(),
        backup,
        mode: mode_of(&full),
        installed: None,
        added_words: Vec::new(),
        removed_words: Vec::new(),
    });
    write_state(host.root, state)
}

/// Record what install left at `path`: a copy, and for a command-line file the words
/// it added and took away. A file install left as it was is forgotten again.
pub(super) fn record_after(host: &Run<'_>, state: &mut InstallState, path: &str) -> Result<()> {
    let Some(index) = state.files.iter().position(|r| r.path == path) else {
        return Ok(());
    };
    let full = under(host.root, path);
    let now = match fs::read(&full) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
    };
    let record = &state.files[index];
    let before = record
        .backup
        .as_ref()
        .map(fs::read)
        .transpose()
        .with_context(|| format!("cannot read the backup of {path}"))?;
    if record.installed.is_none() && now == before {
        // Untouched (grubby had nothing to change here): nothing to undo.
        if let Some(b) = &record.backup {
            let _ = fs::remove_file(b);
        }
        state.files.remove(index);
        return write_state(host.root, state);
    }
    let installed = match &now {
        Some(content) => {
            let copy = state_copy(host.root, "installed", path);
            create_dirs(host.root, copy.parent().expect("copy has a parent"), state)?;
            write_atomic(&copy, content, 0o600)?;
            Some(copy.to_string_lossy().into_owned())
        }
        None => None,
    };
    let record = &mut state.files[index];
    record.installed = installed;
    if let Some(kind) = Kind::of(path) {
        let text = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .map(|b| cmdline::words(kind, &String::from_utf8_lossy(b)))
                .unwrap_or_default()
        };
        let (old, new) = (text(&before), text(&now));
        record.added_words = new.iter().filter(|w| !old.contains(w)).cloned().collect();
        record.removed_words = old.iter().filter(|w| !new.contains(w)).cloned().collect();
    }
    write_state(host.root, state)
}
