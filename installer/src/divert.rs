//! The diversion: /usr/libexec/qemu-kvm becomes the wrapper, the real qemu moves to
//! /usr/libexec/qemu-kvm.orig.
//!
//! At no instant is /usr/libexec/qemu-kvm missing, half-written or non-executable: the
//! real qemu gets its second name by a hard link (or a copy) renamed into place, and the
//! wrapper replaces the first name by one rename of a fully written, fsynced file. If
//! anything fails midway the host is left with qemu-kvm whole, and a later `divert`
//! finishes the job.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::files::{link_or_copy_atomic, under, write_atomic};
use crate::runner::{Ran, Runner};

pub const QEMU: &str = "/usr/libexec/qemu-kvm";
pub const ORIG: &str = "/usr/libexec/qemu-kvm.orig";
/// Where the RPM puts the wrapper.
pub const WRAPPER_SOURCE: &str = "/usr/libexec/gpu-passthrough/qemu-kvm-wrapper";

#[derive(Debug, Clone)]
pub struct Diversion {
    pub qemu: PathBuf,
    pub orig: PathBuf,
    pub wrapper_source: PathBuf,
}

/// What /usr/libexec/qemu-kvm and .orig are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// qemu-kvm is the real qemu, no .orig.
    NotDiverted,
    /// qemu-kvm is the wrapper, .orig the real qemu. `current`: the wrapper is the one
    /// in /usr/libexec/gpu-passthrough.
    Diverted { current: bool },
    /// qemu-kvm is a real qemu again and .orig exists: a qemu-kvm update overwrote the
    /// wrapper (or a divert stopped halfway).
    Overwritten,
    /// qemu-kvm is the wrapper but .orig is gone (or a wrapper too): the real qemu is
    /// lost.
    WrapperWithoutOrig,
    /// There is no qemu-kvm.
    QemuMissing { orig_exists: bool },
}

/// What a call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub changed: bool,
    /// One line per step taken (or, with `--dry-run`, planned), or why nothing was to do.
    pub steps: Vec<String>,
}

impl Diversion {
    pub fn under(root: &Path) -> Self {
        Diversion {
            qemu: under(root, QEMU),
            orig: under(root, ORIG),
            wrapper_source: under(root, WRAPPER_SOURCE),
        }
    }

    fn is_wrapper(path: &Path) -> io::Result<bool> {
        host_model::file_is_wrapper(path)
    }

    pub fn state(&self) -> Result<State> {
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        let orig_exists = exists(&self.orig);
        if !exists(&self.qemu) {
            return Ok(State::QemuMissing { orig_exists });
        }
        let qemu_is_wrapper = Self::is_wrapper(&self.qemu)
            .with_context(|| format!("cannot read {}", self.qemu.display()))?;
        Ok(match (qemu_is_wrapper, orig_exists) {
            (false, false) => State::NotDiverted,
            (false, true) => State::Overwritten,
            (true, false) => State::WrapperWithoutOrig,
            // A wrapper at both names: the real qemu is lost just the same.
            (true, true) if Self::is_wrapper(&self.orig).unwrap_or(false) => {
                State::WrapperWithoutOrig
            }
            (true, true) => State::Diverted {
                current: fs::read(&self.qemu).ok() == fs::read(&self.wrapper_source).ok(),
            },
        })
    }

    /// Divert, or finish or refresh a diversion. Idempotent.
    pub fn divert(&self, runner: &Runner) -> Result<Outcome> {
        let mut steps = Vec::new();
        match self.state()? {
            State::Diverted { current: true } => {
                // Still the repair command the wrapper and the scriptlets print: the
                // files are right, their labels may not be.
                let mut steps = vec![format!(
                    "{} is already the wrapper and {} the real qemu",
                    self.qemu.display(),
                    self.orig.display()
                )];
                steps.extend(self.restorecon(runner)?);
                return Ok(Outcome {
                    changed: false,
                    steps,
                });
            }
            State::QemuMissing { orig_exists } => bail!(
                "{} does not exist{}: install qemu-kvm (dnf install qemu-kvm-core), then run \
                 `gpu-passthrough divert` again",
                self.qemu.display(),
                if orig_exists {
                    format!(
                        " ({} does, left from an earlier diversion)",
                        self.orig.display()
                    )
                } else {
                    String::new()
                }
            ),
            State::WrapperWithoutOrig => bail!(
                "{} is the wrapper but the real qemu {} is missing; not diverting the wrapper \
                 onto itself. Reinstall qemu (dnf reinstall qemu-kvm-core), then run \
                 `gpu-passthrough divert`",
                self.qemu.display(),
                self.orig.display()
            ),
            State::NotDiverted | State::Overwritten => {
                steps.push(format!(
                    "keep the real qemu as {} (hard link of {})",
                    self.orig.display(),
                    self.qemu.display()
                ));
                if !runner.dry_run {
                    link_or_copy_atomic(&self.qemu, &self.orig)?;
                }
            }
            State::Diverted { current: false } => {}
        }
        let wrapper = fs::read(&self.wrapper_source).with_context(|| {
            format!(
                "cannot read the wrapper {} (reinstall the gpu-passthrough package)",
                self.wrapper_source.display()
            )
        })?;
        if !host_model::is_wrapper_binary(&wrapper) {
            bail!(
                "{} is not a qemu-kvm-wrapper binary: not installing it as {}",
                self.wrapper_source.display(),
                self.qemu.display()
            );
        }
        steps.push(format!(
            "install the wrapper {} as {}",
            self.wrapper_source.display(),
            self.qemu.display()
        ));
        if !runner.dry_run {
            write_atomic(&self.qemu, &wrapper, 0o755)?;
        }
        steps.extend(self.restorecon(runner)?);
        Ok(Outcome {
            changed: true,
            steps,
        })
    }

    /// Put the real qemu back at /usr/libexec/qemu-kvm. Idempotent.
    pub fn undivert(&self, runner: &Runner) -> Result<Outcome> {
        let mut steps = Vec::new();
        match self.state()? {
            State::NotDiverted | State::QemuMissing { orig_exists: false } => {
                return Ok(Outcome {
                    changed: false,
                    steps: vec![format!(
                        "{} is not diverted: nothing to do",
                        self.qemu.display()
                    )],
                });
            }
            State::Diverted { .. } | State::QemuMissing { orig_exists: true } => {
                // One rename: qemu-kvm goes from the wrapper to the real qemu in one step.
                steps.push(format!(
                    "move the real qemu {} back to {}",
                    self.orig.display(),
                    self.qemu.display()
                ));
                if !runner.dry_run {
                    fs::rename(&self.orig, &self.qemu).with_context(|| {
                        format!(
                            "cannot rename {} to {}",
                            self.orig.display(),
                            self.qemu.display()
                        )
                    })?;
                    crate::files::sync_dir_of(&self.qemu)?;
                }
            }
            State::Overwritten => {
                // qemu-kvm is a real (newer) qemu already; .orig is the older one.
                steps.push(format!(
                    "remove {}: {} is a real qemu already",
                    self.orig.display(),
                    self.qemu.display()
                ));
                if !runner.dry_run {
                    fs::remove_file(&self.orig)
                        .with_context(|| format!("cannot remove {}", self.orig.display()))?;
                }
            }
            State::WrapperWithoutOrig => bail!(
                "{} is the wrapper and the real qemu {} is missing: reinstall qemu \
                 (dnf reinstall qemu-kvm-core), which replaces the wrapper",
                self.qemu.display(),
                self.orig.display()
            ),
        }
        steps.extend(self.restorecon(runner)?);
        Ok(Outcome {
            changed: true,
            steps,
        })
    }

    /// Whether SELinux labels qemu-kvm and .orig as libvirt's qemu domain needs
    /// (`qemu_exec_t`): each file with the type it has (`None`: no label).
    pub fn labels(&self) -> Vec<(PathBuf, Option<String>)> {
        [&self.qemu, &self.orig]
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| {
                let label = crate::selinux::label_of(p).ok().flatten();
                (
                    p.clone(),
                    label.and_then(|l| crate::selinux::label_type(&l)),
                )
            })
            .collect()
    }

    /// Give what we placed under /usr/libexec its file context (qemu_exec_t) back.
    fn restorecon(&self, runner: &Runner) -> Result<Vec<String>> {
        let qemu = self.qemu.to_string_lossy().into_owned();
        let orig = self.orig.to_string_lossy().into_owned();
        let mut args = vec!["-F", qemu.as_str()];
        if self.orig.exists() || runner.dry_run {
            args.push(orig.as_str());
        }
        Ok(match runner.run("restorecon", &args)? {
            Ran::Done(_) => vec![format!("restorecon {}", args[1..].join(" "))],
            Ran::Skipped(why) => vec![why],
        })
    }
}
