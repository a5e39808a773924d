//! What gpu-passthrough-hook costs per libvirt call, measured on the release binary:
//! - a domain without host devices at `prepare begin`, as a ratio of /bin/true
//!   (goal <= 3x);
//! - a domain with 8 GPUs (16 functions) on a fake host with 1000 PCI functions
//!   (goal <= 10 ms per call);
//! - `started begin` (where the ledger is written): a domain without host devices, as
//!   a ratio of /bin/true (goal <= 3x), and a one-GPU domain, whose record is appended
//!   and fsync'd (the ledger append cost);
//! - a Nova GPU start with 10,001 bookings in enforce mode, through the installer's index
//!   and before it (goal: bookings add < 2 ms).
//!
//! Prints figures; run with `make bench`.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::host::{HostRoot, BOOKINGS, CONFIG, LIBVIRT_RUN, STATE_DIR};
use integration_tests::{bin, write_file, PciFunction};

/// Median over `rounds` of the mean time of `per_round` runs.
fn time(rounds: usize, per_round: usize, mut run: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                run();
            }
            start.elapsed() / per_round as u32
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
}

fn run_with_stdin(command: &mut Command, stdin: &Path) {
    let status = command
        .stdin(File::open(stdin).expect("stdin file"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success(), "{command:?} failed: {status}");
}

fn hostdev(address: &str) -> String {
    let (bus, rest) = address[5..].split_once(':').expect("address");
    let (slot, function) = rest.split_once('.').expect("address");
    format!(
        "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' \
         bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>"
    )
}

fn main() {
    let host = HostRoot::new();
    let sysfs = host.sysfs();
    // 1000 functions: 8 GPUs with their audio functions, each pair an IOMMU group, and
    // 984 others (NICs, NVMe, bridges) in groups of their own.
    let mut gpus = Vec::new();
    let mut count = 0;
    for gpu in 0..8u32 {
        for (function, device, class) in [(0, 0x1eb8, 0x030200), (1, 0x10f8, 0x040300)] {
            let address = format!("0000:{:02x}:00.{function}", 0x18 + gpu * 0x10);
            sysfs.add(&PciFunction::new(
                &address,
                0x10de,
                device,
                class,
                Some("vfio-pci"),
                Some(100 + gpu),
            ));
            gpus.push(address);
            count += 1;
        }
    }
    let mut group = 200;
    'outer: for bus in 0..=0xffu32 {
        for slot in 0..0x20u32 {
            if count == 1000 {
                break 'outer;
            }
            let address = format!("0000:{bus:02x}:{slot:02x}.7");
            sysfs.add(&PciFunction::new(
                &address,
                0x8086,
                0x1572,
                if slot == 0 { 0x060400 } else { 0x020000 },
                Some(if slot == 0 { "pcieport" } else { "i40e" }),
                Some(group),
            ));
            group += 1;
            count += 1;
        }
    }
    host.meminfo(1008 << 30);
    host.config("");
    std::fs::create_dir_all(host.path(LIBVIRT_RUN)).expect("run dir");
    let plain = host.path("plain.xml");
    write_file(
        &plain,
        "<domain type='kvm'><name>plain</name><memory unit='GiB'>4</memory><devices>\
         <disk type='file'/><interface type='bridge'/><memballoon model='virtio'/></devices></domain>",
    );
    let eight = host.path("eight.xml");
    let hostdevs: String = gpus.iter().map(|a| hostdev(a)).collect();
    write_file(
        &eight,
        format!(
            "<domain type='kvm'><name>eight</name><memory unit='GiB'>512</memory>\
             <devices>{hostdevs}</devices></domain>"
        ),
    );

    let one = host.path("one.xml");
    write_file(
        &one,
        format!(
            "<domain type='kvm'><name>one</name><uuid>u1</uuid><memory unit='GiB'>16</memory>\
             <devices>{}</devices></domain>",
            hostdev(&gpus[0])
        ),
    );

    let hook = bin("gpu-passthrough-hook");
    let hook_at = |name: &str, op: &str, sub: &str| {
        let mut c = host.command(&hook);
        c.args([name, op, sub, "-"])
            .env("GPU_PASSTHROUGH_HOSTNAME", "bench");
        c
    };
    let hook_command = |name: &str| hook_at(name, "prepare", "begin");
    // The 8-GPU domain must really pass every check, or we time a refusal.
    run_with_stdin(&mut hook_command("eight"), &eight);

    let (rounds, per_round) = (11, 200);
    let mut t_true = Duration::ZERO;
    let mut t_plain = Duration::ZERO;
    for _ in 0..2 {
        t_true = time(rounds, per_round, || {
            run_with_stdin(&mut Command::new("/bin/true"), &plain)
        });
        t_plain = time(rounds, per_round, || {
            run_with_stdin(&mut hook_command("plain"), &plain)
        });
    }
    let t_eight = time(rounds, per_round / 4, || {
        run_with_stdin(&mut hook_command("eight"), &eight)
    });
    // Bookings: a Nova GPU domain at prepare, without bookings and with [bookings]
    // mode = "enforce" over a file of 10,000 bookings (one of them this project's).
    let nova = host.path("nova.xml");
    write_file(
        &nova,
        format!(
            "<domain type='kvm'><name>nova</name><uuid>u2</uuid><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:owner>\
             <nova:user uuid='u'>alice</nova:user><nova:project uuid='p'>climate</nova:project>\
             </nova:owner></nova:instance></metadata><memory unit='GiB'>16</memory>\
             <devices>{}{}</devices></domain>",
            hostdev(&gpus[2]),
            hostdev(&gpus[3])
        ),
    );
    let mut entries = Vec::new();
    for i in 0..10_000 {
        entries.push(format!(
            "{{\"id\": \"b{i}\", \"project\": \"project-{}\", \"model\": \"10de:1eb8\", \"count\": 2, \"start\": \"2026-01-01T00:00:00Z\", \"end\": \"2026-01-02T00:00:00Z\"}}",
            i % 500
        ));
    }
    entries.push("{\"id\": \"mine\", \"project\": \"climate\", \"model\": \"10de:1eb8\", \"start\": \"2000-01-01T00:00:00Z\", \"end\": \"2100-01-01T00:00:00Z\"}".into());
    write_file(
        &host.path(BOOKINGS),
        format!("{{\"bookings\": [{}]}}", entries.join(",")),
    );
    let t_nova = time(rounds, per_round / 4, || {
        run_with_stdin(&mut hook_command("nova"), &nova)
    });
    write_file(
        &host.path(CONFIG),
        format!(
            "[bookings]\nmode = \"enforce\"\nfile = {:?}\n",
            host.path(BOOKINGS).display().to_string()
        ),
    );
    run_with_stdin(&mut hook_command("nova"), &nova);
    // The first starts after the file changed, before the installer indexed it: the
    // hook checks the whole file.
    let t_unindexed = time(rounds, per_round / 4, || {
        run_with_stdin(&mut hook_command("nova"), &nova)
    });
    // `bookings list` (as `metrics` every 30 s) checks the file and writes the index.
    let listed = Command::new(bin("gpu-passthrough"))
        .args(["bookings", "list"])
        .env("GPU_PASSTHROUGH_CONFIG", host.path(CONFIG))
        .env("GPU_PASSTHROUGH_STATE_DIR", host.path(STATE_DIR))
        .env("GPU_PASSTHROUGH_HOSTNAME", "bench")
        .stdout(Stdio::null())
        .status()
        .expect("run gpu-passthrough bookings list");
    assert!(listed.success(), "bookings list failed: {listed}");
    assert!(host.path(&format!("{STATE_DIR}/bookings.index")).is_file());
    let t_booked = time(rounds, per_round / 4, || {
        run_with_stdin(&mut hook_command("nova"), &nova)
    });
    write_file(&host.path(CONFIG), "");

    let t_started_plain = time(rounds, per_round, || {
        run_with_stdin(&mut hook_at("plain", "started", "begin"), &plain)
    });
    let t_started_one = time(rounds, per_round / 4, || {
        run_with_stdin(&mut hook_at("one", "started", "begin"), &one)
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("gpu-passthrough-hook per call (release build, median of {rounds} rounds):");
    println!("  {:<52} {:>9.1} µs", "/bin/true", us(t_true));
    println!(
        "  {:<52} {:>9.1} µs",
        "prepare begin, domain without host devices",
        us(t_plain)
    );
    println!(
        "  {:<52} {:>9.1} µs",
        format!("prepare begin, 8 GPUs (16 functions), {count} PCI functions"),
        us(t_eight)
    );
    println!(
        "  {:<52} {:>9.1} µs",
        "started begin, domain without host devices",
        us(t_started_plain)
    );
    println!(
        "  {:<52} {:>9.1} µs",
        "started begin, 1 GPU: ledger record appended, fsync",
        us(t_started_one)
    );
    println!(
        "no host devices / /bin/true: {:.2}x at prepare, {:.2}x at started (goal <= 3x)",
        t_plain.as_secs_f64() / t_true.as_secs_f64(),
        t_started_plain.as_secs_f64() / t_true.as_secs_f64()
    );
    println!(
        "ledger append cost (started begin of a GPU domain, whole hook call): {:.2} ms",
        t_started_one.as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "bookings: a Nova GPU start {:.2} ms without, {:.2} ms with 10,001 bookings in enforce mode: +{:.2} ms (goal < 2 ms)",
        ms(t_nova),
        ms(t_booked),
        ms(t_booked) - ms(t_nova)
    );
    println!(
        "bookings, before the installer indexed a changed file (at most one metrics period): {:.2} ms: +{:.2} ms",
        ms(t_unindexed),
        ms(t_unindexed) - ms(t_nova)
    );
    println!(
        "8 GPUs on {count} functions: {:.2} ms (goal <= 10 ms)",
        t_eight.as_secs_f64() * 1e3
    );
}
