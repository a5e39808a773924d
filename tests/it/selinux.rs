//! The package's SELinux module (rpm/gpu-passthrough.cil) on the real targeted policies
//! of EL8, EL9 and EL10, compiled into module stores (../shared/selinux): it must
//! compile into each, give every path the package installs or writes its context, and
//! leave each access the suite needs allowed, as `sesearch` reads the resulting policy.
//! A removed rule or a wrong file context fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{missing_prerequisite, which};

fn shared_selinux() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/selinux")
}

fn cil() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpm/gpu-passthrough.cil")
}

/// The Python that has setools (sesearch's own interpreter).
const PYTHON: &str = "/usr/bin/python3";

/// For each (source, target, class, perm, direct) question, the allow rules of
/// `policy` that grant it; `direct`: rules written with these very types (our
/// module's), not through an attribute. One pass over the policy for all questions
/// (tests/fixtures/allow-rules.py; sesearch would read the policy once per question).
fn allowed(policy: &Path, questions: &[(&str, &str, &str, &str, bool)]) -> Vec<Vec<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/allow-rules.py");
    let mut child = Command::new(PYTHON)
        .arg(script)
        .arg(policy)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with setools");
    let json = serde_json::to_vec(
        &questions
            .iter()
            .map(|(s, t, c, p, d)| serde_json::json!([s, t, c, p, d]))
            .collect::<Vec<_>>(),
    )
    .expect("JSON");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&json)
        .expect("questions");
    let out = child.wait_with_output().expect("allow-rules.py");
    assert!(
        out.status.success(),
        "allow-rules.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("answers as JSON")
}

fn context(file_contexts: &Path, path: &str) -> String {
    let out = Command::new("matchpathcon")
        .arg("-f")
        .arg(file_contexts)
        .args(["-n", path])
        .output()
        .expect("matchpathcon");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything about one platform; returns the failures, so that all three are seen.
fn check_platform(variant: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let root = tempfile::tempdir().expect("tempdir");
    let tarball = shared_selinux().join(format!("targeted-{variant}.tar.xz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .arg("-xJf")
        .arg(&tarball)
        .status()
        .expect("tar");
    assert!(status.success(), "cannot unpack {}", tarball.display());
    let policy = root.path().join("etc/selinux/targeted/policy/policy.33");
    let file_contexts = root
        .path()
        .join("etc/selinux/targeted/contexts/files/file_contexts");
    let el10 = variant == "el10";

    // Why the ledger needs a type of its own: EL10's virtqemud_t may not append to
    // var_lib_t files.
    if el10
        && !allowed(
            &policy,
            &[("virtqemud_t", "var_lib_t", "file", "append", false)],
        )[0]
        .is_empty()
    {
        failures.push(format!(
            "{variant}: virtqemud_t may append to var_lib_t already"
        ));
    }

    let out = Command::new("semodule")
        .arg("-p")
        .arg(root.path())
        .args(["-s", "targeted", "-X", "200", "-i"])
        .arg(cil())
        .output()
        .expect("semodule");
    if !out.status.success() {
        failures.push(format!(
            "{variant}: the module does not compile: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return failures;
    }

    let hook_link_type = if el10 { "virt_hook_t" } else { "virt_etc_rw_t" };
    for (path, expected) in [
        ("/usr/libexec/qemu-kvm", "qemu_exec_t"),
        ("/usr/libexec/qemu-kvm.orig", "qemu_exec_t"),
        ("/usr/libexec/gpu-passthrough/gpu-passthrough-hook", "bin_t"),
        ("/usr/libexec/gpu-passthrough/qemu-kvm-wrapper", "bin_t"),
        ("/usr/sbin/gpu-passthrough", "bin_t"),
        ("/etc/libvirt/hooks/qemu.d/gpu-passthrough", hook_link_type),
        ("/etc/gpu-passthrough/config.toml", "etc_t"),
        ("/var/lib/gpu-passthrough", "gpu_passthrough_var_lib_t"),
        (
            "/var/lib/gpu-passthrough/state.json",
            "gpu_passthrough_var_lib_t",
        ),
        (
            "/var/lib/gpu-passthrough/usage/2026-11.jsonl",
            "gpu_passthrough_var_lib_t",
        ),
    ] {
        let got = context(&file_contexts, path);
        if got != format!("system_u:object_r:{expected}:s0") {
            failures.push(format!("{variant}: {path} is {got:?}, expected {expected}"));
        }
    }

    // (source, target, class, permission, must be our module's own rule, must exist)
    let mut rules: Vec<(&str, &str, &str, &str, bool, bool)> = vec![
        // The wrapper: libvirt starts it in svirt_t, which enters only qemu_exec_t and
        // runs the real qemu (qemu_exec_t too) in the same domain.
        ("svirt_t", "qemu_exec_t", "file", "entrypoint", false, true),
        (
            "svirt_t",
            "qemu_exec_t",
            "file",
            "execute_no_trans",
            false,
            true,
        ),
        ("svirt_t", "bin_t", "file", "entrypoint", false, false),
        ("svirt_t", "etc_t", "file", "read", false, true),
        ("svirt_t", "virt_etc_t", "file", "read", false, true),
    ];
    let daemons: &[&str] = if el10 {
        &["virtd_t", "virtqemud_t"]
    } else {
        &["virtd_t"]
    };
    for d in daemons {
        rules.extend([
            // The hook: a symlink in hooks/qemu.d to the bin_t binary, run in place.
            (*d, hook_link_type, "lnk_file", "read", false, true),
            (*d, "bin_t", "file", "execute", false, true),
            (*d, "etc_t", "file", "read", false, true),
            // The ledger.
            (*d, "var_lib_t", "dir", "search", false, true),
            (*d, "gpu_passthrough_var_lib_t", "dir", "search", true, true),
            (
                *d,
                "gpu_passthrough_var_lib_t",
                "dir",
                "add_name",
                true,
                true,
            ),
            (*d, "gpu_passthrough_var_lib_t", "dir", "write", true, true),
            (
                *d,
                "gpu_passthrough_var_lib_t",
                "file",
                "create",
                true,
                true,
            ),
            (
                *d,
                "gpu_passthrough_var_lib_t",
                "file",
                "append",
                true,
                true,
            ),
            (*d, "gpu_passthrough_var_lib_t", "file", "open", true, true),
            (*d, "gpu_passthrough_var_lib_t", "file", "read", true, true),
            // The bookings file (etc_t) and its index, which the hook maps.
            (*d, "etc_t", "file", "map", false, true),
            (*d, "gpu_passthrough_var_lib_t", "file", "map", true, true),
        ]);
    }
    let questions: Vec<(&str, &str, &str, &str, bool)> = rules
        .iter()
        .map(|(s, t, c, p, ours, _)| (*s, *t, *c, *p, *ours))
        .collect();
    let answers = allowed(&policy, &questions);
    for ((source, target, class, perm, ours, wanted), found) in rules.into_iter().zip(answers) {
        if found.is_empty() == wanted {
            failures.push(format!(
                "{variant}: {source} -> {target}:{class} {perm}: {}{}",
                if wanted { "not allowed" } else { "allowed" },
                if ours {
                    " by the module's own rule"
                } else {
                    ""
                }
            ));
        }
    }
    failures
}

#[test]
fn the_module_compiles_into_el8_el9_el10_and_allows_what_the_suite_needs() {
    let setools = Command::new(PYTHON)
        .args(["-c", "import setools"])
        .status()
        .is_ok_and(|s| s.success());
    if !setools {
        missing_prerequisite("setools for /usr/bin/python3 (apt-get install setools)");
        return;
    }
    for tool in ["semodule", "matchpathcon", "tar", "xz"] {
        if which(tool).is_none() {
            missing_prerequisite(&format!(
                "{tool} (apt-get install semodule-utils policycoreutils setools selinux-utils xz-utils)"
            ));
            return;
        }
    }
    if !shared_selinux().join("targeted-el8.tar.xz").exists() {
        missing_prerequisite("../shared/selinux/targeted-el*.tar.xz beside the repository");
        return;
    }
    // semodule compiles a whole policy (about 20 s each, and memory-hungry: one at a
    // time is faster than three side by side on two cores).
    let failures: Vec<String> = ["el8", "el9", "el10"]
        .into_iter()
        .flat_map(check_platform)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
