//! The one way the installer runs grubby, dracut, restorecon, systemctl and libvirtd:
//! found on PATH, the full command line in every failure, the child's stderr shown only
//! when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// It ran and succeeded; its stdout.
    Done(String),
    /// It was not run, and why (not on PATH, --root, --dry-run).
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct Runner {
    /// Commands act on the running system: with `--root` elsewhere they are not run.
    pub acts_on_host: bool,
    pub dry_run: bool,
}

/// Set to 1, commands run under `--root` too: for tests with stand-ins on PATH, and
/// for a root that is the running system seen through another path.
pub const RUN_UNDER_ROOT_ENV: &str = "GPU_PASSTHROUGH_RUN_UNDER_ROOT";

impl Runner {
    pub fn new(root: &Path, dry_run: bool) -> Self {
        Runner {
            acts_on_host: root == Path::new("/")
                || std::env::var_os(RUN_UNDER_ROOT_ENV).is_some_and(|v| v == "1"),
            dry_run,
        }
    }

    /// Run `program args...`. A program missing from PATH is skipped (the caller says
    /// whether that matters), as is every command under `--root` or `--dry-run`.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Ran> {
        let line = command_line(program, args);
        if self.dry_run {
            return Ok(Ran::Skipped(format!("would run: {line}")));
        }
        if !self.acts_on_host {
            return Ok(Ran::Skipped(format!("not run under --root: {line}")));
        }
        let Some(path) = find_on_path(program) else {
            return Ok(Ran::Skipped(format!(
                "{program} is not installed: skipped {line}"
            )));
        };
        run_path(&path, &line, args)
    }

    /// Like [`Runner::run`] for a read-only query (`libvirtd --version`): it runs
    /// under `--dry-run` and `--root` too.
    pub fn query(&self, program: &str, args: &[&str]) -> Result<Ran> {
        Runner {
            dry_run: false,
            acts_on_host: true,
        }
        .run(program, args)
    }
}

impl Runner {
    /// A read-only question whose answer is its stdout, whatever its exit status
    /// (`systemctl is-active` exits 3 for "inactive"). `None`: the program is not on
    /// PATH or could not run.
    pub fn query_output(&self, program: &str, args: &[&str]) -> Option<String> {
        let path = find_on_path(program)?;
        let out = Command::new(path).args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn run_path(path: &Path, line: &str, args: &[&str]) -> Result<Ran> {
    let out = Command::new(path)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(Ran::Done(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The command as a shell would show it.
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An executable on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_a_shell_would_split() {
        assert_eq!(
            command_line(
                "grubby",
                &["--update-kernel=ALL", "--args=intel_iommu=on iommu=pt"]
            ),
            "grubby --update-kernel=ALL '--args=intel_iommu=on iommu=pt'"
        );
    }

    #[test]
    fn a_failure_names_the_command_and_shows_stderr() {
        let err = run_path(
            Path::new("/bin/sh"),
            "sh -c ...",
            &["-c", "echo boom >&2; exit 3"],
        )
        .expect_err("exit 3");
        let text = format!("{err:#}");
        assert!(text.contains("`sh -c ...` failed"), "{text}");
        assert!(text.contains("boom"), "{text}");
        let ok = run_path(
            Path::new("/bin/sh"),
            "sh",
            &["-c", "echo hi; echo noise >&2"],
        )
        .expect("ok");
        assert_eq!(ok, Ran::Done("hi\n".into()));
    }

    #[test]
    fn nothing_runs_under_root_or_dry_run() {
        let r = Runner::new(Path::new("/tmp/x"), false);
        assert!(
            matches!(r.run("true", &[]).expect("skip"), Ran::Skipped(s) if s.contains("--root"))
        );
        let r = Runner::new(Path::new("/"), true);
        assert!(
            matches!(r.run("true", &[]).expect("skip"), Ran::Skipped(s) if s.starts_with("would run"))
        );
    }
}
