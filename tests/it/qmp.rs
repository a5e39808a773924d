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

/// A paused TCG machine with nothing but its CPU, spoken to over `-qmp stdio`.
const PAUSED_TCG: [&str; 12] = [
    "-accel",
    "tcg",
    "-machine",
    "pc",
    "-m",
    "16",
    "-S",
    "-display",
    "none",
    "-nodefaults",
    "-qmp",
    "stdio",
];

fn start_through_wrapper(config: &Path) -> Qmp {
    let mut command = Command::new(bin("qemu-kvm-wrapper"));
    command
        .args(PAUSED_TCG)
        .args(["-cpu", "qemu64"])
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

/// What QEMU made of one `-cpu` value: `None` when it refused to start.
#[derive(Debug, Clone, PartialEq)]
struct CpuView {
    kvm: Value,
    vendor: Value,
    model_id: Value,
    level: Value,
}

const CPU_PROPERTIES: [&str; 4] = ["kvm", "hv-vendor-id", "model-id", "level"];

/// Start `program` (QEMU, or the wrapper in front of it) with `-cpu value`, read the
/// first CPU's properties over QMP and quit; all commands go in at once.
fn cpu_view(program: &Path, config: &Path, value: &str) -> (Option<CpuView>, String) {
    let mut child = Command::new(program)
        .args(PAUSED_TCG)
        .args(["-cpu", value])
        .env("GPU_PASSTHROUGH_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start QEMU");
    let mut input = String::from("{\"execute\": \"qmp_capabilities\"}\n");
    for p in CPU_PROPERTIES {
        input.push_str(&format!(
            "{}\n",
            json!({"execute": "qom-get", "arguments": {"path": "/machine/unattached/device[0]", "property": p}})
        ));
    }
    input.push_str("{\"execute\": \"quit\"}\n");
    // QEMU may refuse the value and exit before it reads: a broken pipe is an answer.
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes());
    let out = child.wait_with_output().expect("wait for QEMU");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let replies: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("QMP speaks JSON"))
        .filter(|v| v.get("return").is_some() || v.get("error").is_some())
        .collect();
    if !out.status.success() || replies.len() < 1 + CPU_PROPERTIES.len() {
        return (None, stderr);
    }
    let got = |i: usize| replies[1 + i].get("return").cloned().unwrap_or(Value::Null);
    (
        Some(CpuView {
            kvm: got(0),
            vendor: got(1),
            model_id: got(2),
            level: got(3),
        }),
        stderr,
    )
}

/// One generated `-cpu` value and what the generator put in it.
#[derive(Debug)]
struct Generated {
    value: String,
    sets_kvm: bool,
    sets_vendor: bool,
}

/// A few hundred `-cpu` values: models, `kvm` in every form QEMU takes, either spelling
/// of the vendor id, other properties (some with "kvm" and "vendor" in their text), and
/// the odd commas QEMU splits on. Deterministic: the same list at every run.
fn generated_cpu_values() -> Vec<Generated> {
    const MODELS: [&str; 5] = ["qemu64", "max", "Skylake-Client", "EPYC", "kvm64"];
    const KVM: [&str; 7] = [
        "kvm=on", "kvm=off", "+kvm", "-kvm", "kvm", "kvm=no", "kvm=yes",
    ];
    const VENDOR: [&str; 4] = [
        "hv-vendor-id=Abc",
        "hv_vendor_id=VendorTwelve",
        "hv-vendor-id=KVMKVMKVM",
        "hv_vendor_id=x",
    ];
    const OTHER: [&str; 8] = [
        "model-id=Plain",
        "model-id=kvm=off",
        "model-id=hv-vendor-id=Fake",
        "model-id=no kvm here",
        "level=13",
        "+sse4.2",
        "-sse4.2",
        "vendor=GenuineIntel",
    ];
    const SEPARATORS: [&str; 4] = [",", ",", ",,", ",,,"];
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) % n as u64) as usize
    };
    let mut out = Vec::new();
    for i in 0..300 {
        let mut parts: Vec<&str> = Vec::new();
        let (mut sets_kvm, mut sets_vendor) = (false, false);
        for _ in 0..next(4) {
            match next(3) {
                0 => {
                    parts.push(KVM[next(KVM.len())]);
                    sets_kvm = true;
                }
                1 => {
                    parts.push(VENDOR[next(VENDOR.len())]);
                    sets_vendor = true;
                }
                _ => parts.push(OTHER[next(OTHER.len())]),
            }
        }
        // Legacy "+kvm"/"-kvm" and "kvm=..." together are ambiguous to QEMU: one form.
        let plus_minus = parts.iter().any(|p| p.ends_with("kvm") && p.len() == 4);
        let equals = parts.iter().any(|p| p.starts_with("kvm="));
        if plus_minus && equals {
            parts.retain(|p| !p.starts_with("kvm="));
        }
        let mut value = MODELS[i % MODELS.len()].to_owned();
        for p in &parts {
            value.push_str(SEPARATORS[next(SEPARATORS.len())]);
            value.push_str(p);
        }
        if next(10) == 0 {
            value.push(',');
        }
        out.push(Generated {
            value,
            sets_kvm,
            sets_vendor,
        });
    }
    out
}

/// QEMU as the oracle of the `-cpu` rewrite: each generated value goes to the real QEMU
/// directly and through the wrapper, and QEMU's own reading of the CPU must show: an
/// explicit `kvm` or vendor id as QEMU read it unwrapped, else ours (kvm off, our vendor
/// id), and every other property as QEMU read it unwrapped; a value QEMU refuses is
/// refused through the wrapper too. Runs in parallel to stay under a minute.
#[test]
fn qemu_reads_every_rewritten_cpu_value_as_the_contract_says() {
    let Some(qemu) = which("qemu-system-x86_64") else {
        missing_prerequisite(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    write_file(
        &config,
        format!(
            "[wrapper]\ntarget = {:?}\nhv_vendor_id = \"GPUpass_1234\"\napply_to = \"all\"\n",
            qemu.display()
        ),
    );
    let wrapper = bin("qemu-kvm-wrapper");
    let values = generated_cpu_values();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(g) = values.get(i) else { break };
                let (plain, plain_err) = cpu_view(&qemu, &config, &g.value);
                let (wrapped, wrapped_err) = cpu_view(&wrapper, &config, &g.value);
                let expected = plain.clone().map(|p| CpuView {
                    kvm: if g.sets_kvm { p.kvm.clone() } else { json!(false) },
                    vendor: if g.sets_vendor {
                        p.vendor.clone()
                    } else {
                        json!("GPUpass_1234")
                    },
                    ..p
                });
                if wrapped != expected {
                    failures.lock().expect("lock").push(format!(
                        "-cpu {}: QEMU read {plain:?} unwrapped ({}), {wrapped:?} through the wrapper ({}); expected {expected:?}",
                        g.value,
                        plain_err.trim(),
                        wrapped_err.trim()
                    ));
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    eprintln!(
        "{} -cpu values through QEMU, unwrapped and wrapped, in {:.1} s",
        values.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(failures, Vec::<String>::new());
}
