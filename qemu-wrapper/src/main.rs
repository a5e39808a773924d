//! qemu-kvm-wrapper: installed as /usr/libexec/qemu-kvm, libvirt runs it for every VM
//! start and every capability probe. It rewrites `-cpu` (see the library) and executes
//! the real qemu, /usr/libexec/qemu-kvm.orig.
//!
//! It never refuses a start because of its own configuration: a broken config file is
//! one warning line on stderr (libvirt copies stderr into
//! /var/log/libvirt/qemu/DOMAIN.log) and the defaults. It exits with status 127 only when
//! the real qemu cannot be executed.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use host_model::config::{self, WrapperConfig};
use qemu_wrapper::{cpu_value_indices, reason_to_apply, rewrite_argv, Injection};

const NAME: &str = "qemu-kvm-wrapper";

/// Set in the real qemu's environment. Finding it on entry means the "real qemu" led back
/// to this wrapper (a script that runs /usr/libexec/qemu-kvm, say): refuse instead of
/// looping.
const LOOP_GUARD_ENV: &str = "GPU_PASSTHROUGH_WRAPPER_ACTIVE";

/// The command that repairs a broken diversion.
const REPAIR: &str = "gpu-passthrough divert";

/// Exit status when the real qemu cannot be executed, as a shell says "command not found".
const EXIT_CANNOT_EXEC: u8 = 127;

fn main() -> ExitCode {
    // Keep the marker in the binary: the installer recognises the wrapper by it.
    std::hint::black_box(host_model::WRAPPER_MARKER.as_ptr());
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let config_path = config::path_from_env();
    let config = load_config(&config_path);

    // The capability probe has no -cpu: nothing to decide, no sysfs to read.
    if !cpu_value_indices(&argv).is_empty() {
        rewrite(&mut argv, &config);
    }
    let err = exec_target(&config.target, &argv, &config_path);
    warn(&err);
    ExitCode::from(EXIT_CANNOT_EXEC)
}

/// The `[wrapper]` section, leniently: whatever is wrong becomes one stderr line.
fn load_config(path: &Path) -> WrapperConfig {
    let text = match config::read_text(path) {
        Ok(Some(text)) => text,
        Ok(None) => return WrapperConfig::default(),
        Err(err) => {
            let hint = if err.kind() == io::ErrorKind::PermissionDenied {
                // On EL8-EL10 every domain, svirt_t included, may read etc_t and
                // virt_etc_t files: the mode or the owner is the cause, not the label.
                format!(
                    " (the qemu user cannot read it: check its mode and owner, e.g. chmod 0644 {})",
                    path.display()
                )
            } else {
                String::new()
            };
            warn(&format!(
                "cannot read {}: {err}{hint}; using the defaults",
                path.display()
            ));
            return WrapperConfig::default();
        }
    };
    let parsed = config::parse(&text);
    if !parsed.problems.is_empty() {
        let problems: Vec<String> = parsed.problems.iter().map(|p| p.to_string()).collect();
        warn(&format!(
            "{}: {}; using the defaults for these",
            path.display(),
            problems.join("; ")
        ));
    }
    parsed.config.wrapper
}

fn rewrite(argv: &mut [OsString], config: &WrapperConfig) {
    let sysfs = host_model::sysfs_root_from_env();
    let Some(reason) = reason_to_apply(config.apply_to, argv, &sysfs) else {
        return;
    };
    let injection = Injection {
        hide_kvm: config.hide_kvm,
        hv_vendor_id: config.hv_vendor_id.as_str(),
    };
    let changed = rewrite_argv(argv, &injection);
    if changed.is_empty() {
        return;
    }
    let changes: Vec<String> = changed
        .iter()
        .map(|c| {
            format!(
                "-cpu {} -> {}",
                c.old.to_string_lossy(),
                c.new.to_string_lossy()
            )
        })
        .collect();
    warn(&format!("{} ({reason})", changes.join("; ")));
}

/// Replace this process with the real qemu. Returns only on failure, with the message to
/// print.
fn exec_target(target: &Path, argv: &[OsString], config_path: &Path) -> String {
    let cannot = |why: &dyn std::fmt::Display| {
        format!(
            "cannot execute the real qemu {}: {why}. Repair: run `{REPAIR}` \
             (it puts the real qemu back at {}), or set [wrapper] target in {}",
            target.display(),
            config::DEFAULT_TARGET,
            config_path.display()
        )
    };
    if std::env::var_os(LOOP_GUARD_ENV).is_some() {
        return cannot(&format!(
            "it led back to this wrapper ({LOOP_GUARD_ENV} is set), which would loop"
        ));
    }
    if is_this_binary(target) {
        return cannot(&"it is this wrapper itself, which would loop");
    }
    let mut command = Command::new(target);
    if let Some((argv0, args)) = argv.split_first() {
        command.arg0(argv0).args(args);
    }
    let err = command.env(LOOP_GUARD_ENV, target).exec();
    cannot(&err)
}

/// Whether `target` (symlinks followed) is the file this process runs from.
fn is_this_binary(target: &Path) -> bool {
    let (Ok(target), Ok(me)) = (
        std::fs::metadata(target),
        std::fs::metadata("/proc/self/exe"),
    ) else {
        return false;
    };
    (target.dev(), target.ino()) == (me.dev(), me.ino())
}

/// One line on stderr. A failed write is ignored: stderr is all we have.
fn warn(message: &dyn std::fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "{NAME}: {message}");
}
