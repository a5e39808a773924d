//! qemu-kvm-wrapper: installed as /usr/libexec/qemu-kvm, libvirt runs it for every VM
//! start and every capability probe. It rewrites `-cpu` (see the library) and executes
//! the real qemu, /usr/libexec/qemu-kvm.orig.
//!
//! It never refuses a start because of its own configuration: a broken config file is
//! one warning line on stderr (libvirt copies stderr into
//! /var/log/libvirt/qemu/DOMAIN.log) and the defaults. It exits with status 127 only when
//! the real qemu cannot be executed.
//!
//! It runs before every qemu, so it starts the way a C program does: its own C `main`
//! (no Rust runtime set-up: no stack-guard probe of /proc/self/maps, no signal stack, no
//! poll of the standard descriptors, SIGPIPE left as libvirt set it), one `write` per
//! stderr line, and `execve` called directly.

#![no_main]

use std::ffi::{c_char, c_int, CStr, CString, OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// The C entry point: the C runtime calls it with the process's arguments.
///
/// # Safety
/// `argv` holds `argc` pointers to NUL-terminated strings that outlive the call, as the
/// C runtime guarantees.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let argv: Vec<OsString> = (0..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: the C runtime passes `argc` pointers to NUL-terminated strings that
            // live as long as the process.
            let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
            OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect();
    c_int::from(run(argv))
}

fn run(mut argv: Vec<OsString>) -> u8 {
    // Keep the marker in the binary: the installer recognises the wrapper by it.
    std::hint::black_box(host_model::WRAPPER_MARKER.as_ptr());
    let config_path = config::path_from_env();
    let config = load_config(&config_path);

    // The capability probe has no -cpu: nothing to decide, no sysfs to read.
    if !cpu_value_indices(&argv).is_empty() {
        rewrite(&mut argv, &config);
    }
    let err = exec_target(&config.target, &argv, &config_path);
    warn(&err);
    EXIT_CANNOT_EXEC
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
    match execve(target, argv) {
        Ok(never) => match never {},
        Err(err) => cannot(&err),
    }
}

extern "C" {
    /// The process's environment (POSIX).
    static environ: *const *const c_char;
}

/// `execve(2)` of `target` with `argv` and this process's environment plus the loop
/// guard. Returns only on failure.
fn execve(target: &Path, argv: &[OsString]) -> io::Result<std::convert::Infallible> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::other("an argument holds a NUL byte"))
    };
    let path = c(target.as_os_str())?;
    let args: Vec<CString> = argv.iter().map(|a| c(a)).collect::<io::Result<_>>()?;
    let mut guard = OsString::from(LOOP_GUARD_ENV);
    guard.push("=");
    guard.push(target);
    let guard = c(&guard)?;
    // This process's environment as it is, the loop guard added (the guard is never
    // set on entry: `exec_target` refused that).
    let mut env_ptrs: Vec<*const c_char> = Vec::with_capacity(64);
    // SAFETY: `environ` is the C runtime's NULL-terminated array of NUL-terminated
    // strings; nothing in this single-threaded process changes it while it is read.
    unsafe {
        let mut e = environ;
        while !e.is_null() && !(*e).is_null() {
            env_ptrs.push(*e);
            e = e.add(1);
        }
    }
    env_ptrs.push(guard.as_ptr());
    env_ptrs.push(std::ptr::null());
    let mut arg_ptrs: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    // SAFETY: `path` and every pointer of the two NULL-terminated arrays point to
    // NUL-terminated strings that the vectors above keep alive across the call.
    unsafe { libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    Err(io::Error::last_os_error())
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

/// One line on stderr, in one `write`. A failed write is ignored: stderr is all we have.
fn warn(message: &dyn std::fmt::Display) {
    let line = format!("{NAME}: {message}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}
