//! The metrics on the real monitoring stack: node_exporter's textfile collector serves
//! what `gpu-passthrough metrics` writes, Prometheus scrapes it every second into a
//! temporary TSDB, a scripted scenario plays through the hook as libvirt calls it, and
//! every expression of every panel of the shipped Grafana dashboard is asked of
//! Prometheus' HTTP API, with the answer it must give.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::host::{HostRoot, LIBVIRT_RUN};
use integration_tests::{bin, missing_prerequisite, which, write_file, PciFunction};
use serde_json::Value;

const SCRAPE_SECONDS: f64 = 1.0;
const PCI_IDS: &str = "10de  NVIDIA Corporation\n\t1b02  GP102 [TITAN Xp]\n\t10ef  GP102 HDMI Audio Controller\n\t1eb8  TU104GL [Tesla T4]\n";

/// A child process killed when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET on 127.0.0.1:`port`: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// An instant query at `time` (Unix seconds): the result vector.
fn query(port: u16, expr: &str, time: f64) -> Vec<Value> {
    let (status, body) = get(
        port,
        &format!("/api/v1/query?query={}&time={time:.3}", encode(expr)),
    )
    .unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    assert_eq!(status, 200, "{expr}: {body}");
    let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().expect("a vector").clone()
}

/// The label `name` and the value of each sample, sorted.
fn by_label(result: &[Value], name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            (
                s["metric"][name].as_str().unwrap_or("").to_owned(),
                s["value"][1]
                    .as_str()
                    .expect("a value")
                    .parse()
                    .expect("a number"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host: three GPUs on vfio-pci, 64 GiB, a hook and an installer that read it.
#[derive(Clone)]
struct Scene {
    host: Arc<HostRoot>,
}

impl Scene {
    fn path(&self, rel: &str) -> PathBuf {
        self.host.path(rel)
    }

    /// `program` pointed at the host, with this machine's PATH.
    fn command(&self, program: &str) -> Command {
        let mut c = self.host.command(&bin(program));
        c.env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GPU_PASSTHROUGH_HOSTNAME", "gpu-node-1");
        c
    }

    fn domain(name: &str, project: &str, user: &str, address: &str) -> String {
        let (bus, _) = address[5..].split_once(':').expect("address");
        format!(
            "<domain type='kvm'><name>{name}</name><uuid>uuid-{name}</uuid><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
             <nova:name>{name}-display</nova:name><nova:flavor name='g1.gpu'/><nova:owner>\
             <nova:user uuid='{user}-id'>{user}</nova:user><nova:project uuid='{project}-id'>{project}</nova:project>\
             </nova:owner></nova:instance></metadata><memory unit='GiB'>4</memory><devices>\
             <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' \
             bus='0x{bus}' slot='0x00' function='0x0'/></source></hostdev></devices></domain>"
        )
    }

    fn hook(&self, name: &str, op: &str, sub: &str, xml: &str) -> i32 {
        let mut child = self
            .command("gpu-passthrough-hook")
            .args([name, op, sub, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("hook");
        let _ = child.stdin.take().expect("stdin").write_all(xml.as_bytes());
        child.wait().expect("hook").code().unwrap_or(-1)
    }

    /// libvirt's start: prepare (may refuse), then the status file, then started.
    fn start(&self, name: &str, project: &str, user: &str, address: &str) -> bool {
        let xml = Self::domain(name, project, user, address);
        if self.hook(name, "prepare", "begin", &xml) != 0 {
            self.hook(name, "release", "end", &xml);
            return false;
        }
        self.host.running(name, &xml);
        assert_eq!(self.hook(name, "started", "begin", &xml), 0);
        true
    }

    fn stop(&self, name: &str, project: &str, user: &str, address: &str) {
        let xml = Self::domain(name, project, user, address);
        std::fs::remove_file(self.path(&format!("{LIBVIRT_RUN}/{name}.xml"))).expect("status file");
        assert_eq!(self.hook(name, "release", "end", &xml), 0);
    }

    fn metrics(&self) {
        let out = self
            .command("gpu-passthrough")
            .arg("--root")
            .arg(self.host.root())
            .args(["metrics", "--textfile-dir"])
            .arg(self.path("textfiles"))
            .output()
            .expect("metrics");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn usage_hours(&self, since: &str) -> BTreeMap<String, f64> {
        let out = self
            .command("gpu-passthrough")
            .arg("--root")
            .arg(self.host.root())
            .args(["usage", "--json", "--since", since])
            .output()
            .expect("usage");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v.as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["project_name"].as_str().unwrap_or("").to_owned(),
                    r["gpu_hours"].as_f64().expect("hours"),
                )
            })
            .collect()
    }
}

/// The dashboard's panels: (title, expression with Grafana's variables filled in).
fn panels(range: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpm/grafana/gpu-passthrough.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    assert_eq!(
        dash["templating"]["list"][0]["type"], "datasource",
        "a datasource variable, no hard-coded UID"
    );
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__range", range)
                .replace("$instance", ".*");
            out.push((p["title"].as_str().expect("title").to_owned(), expr));
        }
    }
    out
}

#[test]
#[ignore = "a timed scenario against real daemons; `make test` runs it on its own"]
fn dashboard_panels_and_usage_agree_on_real_prometheus_and_node_exporter() {
    let (Some(prometheus), Some(node_exporter)) = (
        which("prometheus"),
        which("prometheus-node-exporter").or_else(|| which("node_exporter")),
    ) else {
        missing_prerequisite(
            "prometheus and node_exporter (apt-get install prometheus prometheus-node-exporter)",
        );
        return;
    };
    let scene = Scene {
        host: Arc::new(HostRoot::new()),
    };
    let sysfs = scene.host.sysfs();
    for (address, device, class, group) in [
        ("0000:18:00.0", 0x1b02, 0x030000, 30),
        ("0000:18:00.1", 0x10ef, 0x040300, 30),
        ("0000:3b:00.0", 0x1eb8, 0x030200, 40),
        ("0000:af:00.0", 0x1eb8, 0x030200, 50),
    ] {
        sysfs.add(&PciFunction::new(
            address,
            0x10de,
            device,
            class,
            Some("vfio-pci"),
            Some(group),
        ));
    }
    // The T4 at 3b runs a degraded link and reported two correctable AER errors.
    let t4 = sysfs.device_dir("0000:3b:00.0");
    for (file, value) in [
        ("power_state", "D0\n"),
        ("current_link_speed", "8.0 GT/s PCIe\n"),
        ("max_link_speed", "8.0 GT/s PCIe\n"),
        ("current_link_width", "8\n"),
        ("max_link_width", "16\n"),
        ("aer_dev_correctable", "RxErr 2\nTOTAL_ERR_COR 2\n"),
    ] {
        write_file(&t4.join(file), value);
    }
    scene.host.meminfo(64 << 30);
    scene.host.pci_ids(PCI_IDS);
    scene.host.config("");
    std::fs::create_dir_all(scene.path(LIBVIRT_RUN)).expect("run");
    std::fs::create_dir_all(scene.path("textfiles")).expect("textfiles");

    let exporter_port = free_port();
    let prometheus_port = free_port();
    let _exporter = Daemon(
        Command::new(node_exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!(
                "--collector.textfile.directory={}",
                scene.path("textfiles").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node_exporter"),
    );
    write_file(
        &scene.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n        labels:\n          instance: gpu-node-1\n"
        ),
    );
    let _prometheus = Daemon(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                scene.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                scene.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        get(prometheus_port, "/-/ready").is_some_and(|(s, _)| s == 200)
    });

    // The metrics timer, every second here.
    let stop_metrics = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics_loop = {
        let stop = stop_metrics.clone();
        let scene = scene.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                scene.metrics();
                std::thread::sleep(Duration::from_millis(1000));
            }
        })
    };
    // The scenario starts once Prometheus scrapes the textfile.
    wait_until(
        "the first scrape of the textfile",
        Duration::from_secs(60),
        || {
            !query(
                prometheus_port,
                "gpu_passthrough_last_run_timestamp_seconds",
                now(),
            )
            .is_empty()
        },
    );
    let t0 = now();
    // The state directory is new: every record in it is this scenario's.
    let since = "2000-01-01";
    let at = |s: f64| {
        let target = t0 + s;
        let wait = target - now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    };
    at(2.0);
    assert!(scene.start("vm-a", "climate", "alice", "0000:18:00.0"));
    assert!(scene.start("vm-b", "genome", "bob", "0000:3b:00.0"));
    at(3.0);
    assert!(
        !scene.start("vm-c", "genome", "bob", "0000:99:00.0"),
        "no such device: refused"
    );
    assert!(scene.start("vm-crash", "genome", "bob", "0000:af:00.0"));
    at(5.0);
    // The host "crashes" under vm-crash: its status file is gone, no release came.
    std::fs::remove_file(scene.path(&format!("{LIBVIRT_RUN}/vm-crash.xml"))).expect("crash");
    at(8.0);
    let checkpoint = now();
    at(9.0);
    scene.stop("vm-a", "climate", "alice", "0000:18:00.0");
    at(10.0);
    scene.stop("vm-b", "genome", "bob", "0000:3b:00.0");
    at(14.0);
    stop_metrics.store(true, std::sync::atomic::Ordering::SeqCst);
    metrics_loop.join().expect("metrics loop");
    let end = now();
    let range = format!("{}s", (end - t0 + 5.0).ceil() as u64);

    let mut seen = Vec::new();
    for (title, expr) in panels(&range) {
        seen.push(title.clone());
        match title.as_str() {
            "GPUs in use, per host and model" => assert_eq!(
                by_label(&query(prometheus_port, &expr, checkpoint), "model"),
                vec![
                    ("NVIDIA Corporation GP102 [TITAN Xp]".into(), 1.0),
                    ("NVIDIA Corporation TU104GL [Tesla T4]".into(), 1.0)
                ],
                "{title} at the checkpoint"
            ),
            "GPUs free, per host and model" => assert_eq!(
                by_label(&query(prometheus_port, &expr, checkpoint), "model"),
                vec![
                    ("NVIDIA Corporation GP102 [TITAN Xp]".into(), 0.0),
                    ("NVIDIA Corporation TU104GL [Tesla T4]".into(), 1.0)
                ],
                "{title}: the crashed VM's T4 is free again"
            ),
            "Who holds which GPU now" => {
                let rows = query(prometheus_port, &expr, checkpoint);
                let mut got: Vec<(String, String, String, String, String)> = rows
                    .iter()
                    .map(|r| {
                        let m = &r["metric"];
                        let s = |k: &str| m[k].as_str().unwrap_or("").to_owned();
                        (
                            s("address"),
                            s("domain"),
                            s("project_name"),
                            s("user_name"),
                            s("instance_id"),
                        )
                    })
                    .collect();
                got.sort();
                assert_eq!(
                    got,
                    vec![
                        (
                            "0000:18:00.0".into(),
                            "vm-a".into(),
                            "climate".into(),
                            "alice".into(),
                            "uuid-vm-a".into()
                        ),
                        (
                            "0000:3b:00.0".into(),
                            "vm-b".into(),
                            "genome".into(),
                            "bob".into(),
                            "uuid-vm-b".into()
                        ),
                    ],
                    "{title}"
                );
                assert!(
                    query(prometheus_port, &expr, end).is_empty(),
                    "nobody at the end"
                );
            }
            "GPU-hours per project over the range" => {
                let promql = by_label(&query(prometheus_port, &expr, end), "project_name");
                let usage = scene.usage_hours(since);
                println!("GPU-hours per project: PromQL {promql:?}, usage {usage:?}");
                assert_eq!(promql.len(), 2, "{promql:?}");
                for (project, hours) in promql {
                    let from_usage = usage[&project];
                    let diff_seconds = (hours - from_usage).abs() * 3600.0;
                    assert!(
                        diff_seconds <= SCRAPE_SECONDS + 0.5,
                        "{project}: PromQL {hours} h, usage {from_usage} h: {diff_seconds:.2} s apart"
                    );
                }
                // climate: vm-a 7 s; genome: vm-b 8 s, vm-crash about 2 s (up to the
                // heartbeat before the crash).
                assert!((usage["climate"] * 3600.0 - 7.0).abs() < 1.5, "{usage:?}");
                assert!((usage["genome"] * 3600.0 - 10.0).abs() < 2.5, "{usage:?}");
            }
            "Refusals per check over the range" => assert_eq!(
                by_label(&query(prometheus_port, &expr, end), "check")
                    .into_iter()
                    .map(|(c, n)| (c, n.round()))
                    .collect::<Vec<_>>(),
                vec![("device".into(), 1.0)],
                "{title}"
            ),
            "Degraded PCIe links" => assert_eq!(
                by_label(&query(prometheus_port, &expr, end), "address"),
                vec![("0000:3b:00.0".into(), 8.0)],
                "{title}"
            ),
            "AER errors over the range" => {
                // The count was 2 from the first scrape on: no increase in the range.
                assert!(query(prometheus_port, &expr, end).is_empty(), "{title}");
                let total = query(prometheus_port, "gpu_passthrough_aer_errors_total", end);
                assert_eq!(
                    by_label(&total, "severity"),
                    vec![("correctable".into(), 2.0)]
                );
            }
            "Seconds since the last metrics run" => {
                let ages = by_label(&query(prometheus_port, &expr, end), "instance");
                assert_eq!(ages.len(), 1, "{ages:?}");
                assert!(ages[0].1 < 5.0, "{ages:?}");
            }
            other => panic!("the test does not know the panel {other:?}: add its expected answer"),
        }
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
}
