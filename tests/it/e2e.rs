//! End to end on a real libvirtd (tests/e2e/libvirt-e2e.sh): the wrapper as a domain's
//! emulator and the hook in hooks/qemu.d, real QEMU, a guest that prints the hypervisor
//! signature. It needs root and changes /etc/libvirt/hooks for its duration, so it is
//! ignored by a plain `cargo test`; `make test` runs it with `--ignored`.

use std::path::Path;
use std::process::Command;

use integration_tests::{bin, bin_dir};

#[test]
#[ignore = "needs root and libvirt; `make test` runs it"]
fn libvirt_end_to_end() {
    // The binaries must exist before the script looks for them.
    bin("qemu-kvm-wrapper");
    bin("gpu-passthrough-hook");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/libvirt-e2e.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(bin_dir())
        .output()
        .expect("run the end-to-end script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "the end-to-end test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("e2e: PASS") || stdout.starts_with("SKIP:"),
        "the script neither passed nor skipped:\n{stdout}"
    );
}

/// The same on the modular daemon: virtqemud and virtlogd of libvirt 11.3 with QEMU 10
/// in a Debian 13 root (tests/e2e/virtqemud-e2e.sh; the root is built once and cached).
#[test]
#[ignore = "needs root, mmdebstrap and a Debian mirror; `make test` runs it"]
fn virtqemud_end_to_end() {
    bin("qemu-kvm-wrapper");
    bin("gpu-passthrough-hook");
    bin("gpu-passthrough");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/virtqemud-e2e.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(bin_dir())
        .output()
        .expect("run the virtqemud end-to-end script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "the virtqemud end-to-end test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("virtqemud-e2e: PASS") || stdout.starts_with("SKIP:"),
        "the script neither passed nor skipped:\n{stdout}"
    );
}
