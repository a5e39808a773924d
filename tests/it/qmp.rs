//! The wrapper in front of the real QEMU (Debian's qemu-system-x86_64, TCG): what the
//! CPU object says over QMP after the rewrite.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use integration_tests::{bin, missing_prerequisite, which, write_file};
use serde_json::{json, Value};

/// A QEMU process spoken to over `-qmp stdio`.
struct Qmp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Qmp {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the wrapper");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut qmp = Qmp {
            child,
            stdin,
            stdout,
        };
        let greeting = qmp.read();
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", json!({}));
        qmp
    }

    /// The next message that is not an event.
    fn read(&mut self) -> Value {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read QMP");
            if n == 0 {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("QEMU closed QMP: {stderr}");
            }
            let value: Value = serde_json::from_str(&line).expect("QMP speaks JSON");
            if value.get("event").is_none() {
                return value;
            }
        }
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments});
        writeln!(self.stdin, "{request}").expect("write QMP");
        let reply = self.read();
        reply
            .get("return")
            .unwrap_or_else(|| panic!("{command} failed: {reply}"))
            .clone()
    }

    /// `qom-get` of one property of the first CPU.
    fn cpu_property(&mut self, property: &str) -> Value {
        let cpus = self.execute("query-cpus-fast", json!({}));
        let path = cpus[0]["qom-path"].as_str().expect("qom-path").to_owned();
        self.execute("qom-get", json!({"path": path, "property": property}))
    }

    /// Quit QEMU; returns what it (and the wrapper before it) wrote on stderr.
    fn quit(mut self) -> String {
        writeln!(self.stdin, "{}", json!({"execute": "quit"})).expect("write quit");
        let out = self.child.wait_with_output().expect("wait for QEMU");
        assert!(out.status.success(), "QEMU exit {:?}", out.status);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn start_through_wrapper(config: &Path) -> Qmp {
    let mut command = Command::new(bin("qemu-kvm-wrapper"));
    command
        .args([
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-S",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-qmp", "stdio", "-cpu", "qemu64"])
        .env("GPU_PASSTHROUGH_CONFIG", config);
    Qmp::start(command)
}

#[test]
fn real_qemu_sees_kvm_off_and_the_configured_vendor_id() {
    let Some(qemu) = which("qemu-system-x86_64") else {
        missing_prerequisite(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let wrapper_config = |apply_to: &str| {
        format!(
            "[wrapper]\ntarget = {:?}\nhv_vendor_id = \"GPUpass_1234\"\napply_to = \"{apply_to}\"\n",
            qemu.display()
        )
    };

    // Control: the same command line with the wrapper told to leave it alone.
    write_file(&config, wrapper_config("none"));
    let mut qmp = start_through_wrapper(&config);
    assert_eq!(qmp.cpu_property("kvm"), json!(true));
    assert_ne!(qmp.cpu_property("hv-vendor-id"), json!("GPUpass_1234"));
    let stderr = qmp.quit();
    assert!(!stderr.contains("qemu-kvm-wrapper"), "{stderr}");

    write_file(&config, wrapper_config("all"));
    let mut qmp = start_through_wrapper(&config);
    assert_eq!(qmp.cpu_property("kvm"), json!(false));
    assert_eq!(qmp.cpu_property("hv-vendor-id"), json!("GPUpass_1234"));
    let stderr = qmp.quit();
    assert!(
        stderr
            .contains("qemu-kvm-wrapper: -cpu qemu64 -> qemu64,kvm=off,hv-vendor-id=GPUpass_1234"),
        "{stderr}"
    );
}
