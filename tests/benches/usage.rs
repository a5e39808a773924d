//! `gpu-passthrough usage` over a year of a busy 100-GPU host, on the release binary
//! (goal: under a second). The ledger is generated: 100 GPUs, each running VM after VM
//! of 1 to 12 hours all year, 40 projects of 5 users each, a refusal now and then.
//!
//! Prints figures; run with `make bench`.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use integration_tests::bin;

/// A small deterministic generator (xorshift), so every run times the same ledger.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let usage = dir.path().join("usage");
    std::fs::create_dir_all(&usage).expect("mkdir");
    let year_start: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    let year_end = year_start + 365 * 86_400;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // (unix time, line), sorted later into month files.
    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut vm = 0u64;
    for gpu in 0..100u32 {
        let address = format!("0000:{:02x}:00.0", 0x10 + gpu);
        let mut t = year_start + (rng.next() % 3600) as i64;
        while t < year_end {
            vm += 1;
            let project = rng.next() % 40;
            let user = project * 5 + rng.next() % 5;
            let hours = 1 + (rng.next() % 12) as i64;
            let end = (t + hours * 3600).min(year_end);
            let record = |event: &str, at: i64, checks: &str| {
                format!(
                    "{{\"ts\":\"{}\",\"event\":\"{event}\",\"host\":\"gpu-node-1\",\"domain\":\"instance-{vm:08x}\",\
                     \"domain_uuid\":\"uuid-{vm}\",\"instance_id\":\"uuid-{vm}\",\"instance_name\":\"vm-{vm}\",\
                     \"project_id\":\"p{project}\",\"project_name\":\"project-{project}\",\"user_id\":\"u{user}\",\
                     \"user_name\":\"user-{user}\",\"flavor_name\":\"g1.t4\",\"gpus\":[{{\"address\":\"{address}\",\
                     \"vendor_id\":\"10de\",\"device_id\":\"1eb8\",\"model\":\"Tesla T4\"}}]{checks}}}",
                    rfc3339(at)
                )
            };
            if rng.next().is_multiple_of(20) {
                lines.push((t, record("refused", t, ",\"checks\":[\"memory\"]")));
            }
            lines.push((t, record("start", t, "")));
            lines.push((end, record("stop", end, "")));
            t = end + (rng.next() % 1800) as i64;
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    let mut files: std::collections::BTreeMap<String, String> = Default::default();
    for (t, line) in &lines {
        let month = rfc3339(*t)[..7].to_owned();
        let text = files.entry(month).or_default();
        let _ = writeln!(text, "{line}");
    }
    let mut bytes = 0;
    for (month, text) in &files {
        bytes += text.len();
        std::fs::write(usage.join(format!("{month}.jsonl")), text).expect("write");
    }
    if let Some(keep) = std::env::var_os("USAGE_BENCH_KEEP") {
        // For profiling: leave the ledger where it can be read again.
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("mkdir");
        for (month, text) in &files {
            std::fs::write(keep.join(format!("{month}.jsonl")), text).expect("write");
        }
    }
    let gpu_passthrough = bin("gpu-passthrough");
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let out = Command::new(&gpu_passthrough)
            .args([
                "usage",
                "--json",
                "--since",
                "2025-01-01",
                "--until",
                "2026-01-01",
                "--ledger",
            ])
            .arg(&usage)
            .output()
            .expect("usage");
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            rows.as_array().map(Vec::len),
            Some(40),
            "one row per project"
        );
    }
    times.sort();
    println!(
        "gpu-passthrough usage, a year of 100 GPUs: {} records ({} VMs), {:.1} MiB in {} files",
        lines.len(),
        vm,
        bytes as f64 / (1 << 20) as f64,
        files.len()
    );
    println!(
        "  report (--by project --json), median of 5: {:.0} ms (min {:.0}, max {:.0}; goal < 1000 ms)",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );
}

/// Unix seconds as RFC 3339 UTC (civil from days, Howard Hinnant's algorithm).
fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
