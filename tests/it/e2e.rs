//! End to end on a real libvirtd (tests/e2e/libvirt-e2e.sh): the wrapper as a domain's
//! emulator and the hook in hooks/qemu.d, real QEMU, a guest that prints the hypervisor
//! signature. It needs root and changes /etc/libvirt/hooks for its duration, so it is
//! ignored by a plain `cargo test`; `make test` runs it with `--ignored`.

use std::path::Path;
use std::process::Command;

use integration_tests::{bin, bin_dir};

/// Run an end-to-end script with the build directory; it must pass (or skip outside CI).
fn run_script(name: &str, pass: &str) {
    // The binaries must exist (and be fresh) before the script looks for them.
    for b in [
        "qemu-kvm-wrapper",
        "gpu-passthrough-hook",
        "gpu-passthrough",
    ] {
        bin(b);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e").join(name);
    let out = Command::new("bash")
        .arg(&script)
        .arg(bin_dir())
        .output()
        .expect("run the end-to-end script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(pass) || stdout.starts_with("SKIP:"),
        "{name} neither passed nor skipped:\n{stdout}"
    );
}

#[test]
#[ignore = "needs root and libvirt; `make test` runs it"]
fn libvirt_end_to_end() {
    run_script("libvirt-e2e.sh", "e2e: PASS");
}

/// The same on the modular daemon: virtqemud and virtlogd of libvirt 11.3 with QEMU 10
/// in a Debian 13 root (tests/e2e/virtqemud-e2e.sh; the root is built once and cached).
#[test]
#[ignore = "needs root, mmdebstrap and a Debian mirror; `make test` runs it"]
fn virtqemud_end_to_end() {
    run_script("virtqemud-e2e.sh", "virtqemud-e2e: PASS");
}
