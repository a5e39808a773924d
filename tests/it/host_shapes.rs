//! The host shapes on disk (tests/fixtures/hosts/*/host.txt) with the installer's
//! whole output beside them (expected/*.txt): each expected file is run and compared
//! whole, exit status, stdout and stderr. See tests/fixtures/hosts/README.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::host::HostRoot;
use integration_tests::{bin, PciFunction};

/// pci.ids for every shape: the names the expected output shows.
const PCI_IDS: &str = "10de  NVIDIA Corporation\n\t10ef  GP102 HDMI Audio Controller\n\t1b02  GP102 [TITAN Xp]\n\t1eb8  TU104GL [Tesla T4]\n1a03  ASPEED Technology, Inc.\n\t2000  ASPEED Graphics Family\n8086  Intel Corporation\n\t1572  Ethernet Controller X710 for 10GbE SFP+\n";

fn shapes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hosts")
}

/// Build the host `host.txt` describes. Panics naming the file and line on a bad line.
fn build(description: &Path) -> HostRoot {
    let text = std::fs::read_to_string(description)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", description.display()));
    let host = HostRoot::new();
    host.pci_ids(PCI_IDS);
    for (n, line) in text.lines().enumerate() {
        let bad = || -> ! { panic!("{}:{}: cannot read {line:?}", description.display(), n + 1) };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["cpu", vendor, flags @ ..] => host.cpu(vendor, &flags.join(" ")),
            ["cmdline", words @ ..] => host.cmdline(&words.join(" ")),
            ["pci", address, ids, class, driver, group] => {
                let (vendor, device) = ids.split_once(':').unwrap_or_else(|| bad());
                let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
                let (Some(vendor), Some(device), Some(class)) =
                    (hex(vendor), hex(device), hex(class))
                else {
                    bad()
                };
                host.add(&PciFunction::new(
                    address,
                    u16::try_from(vendor).unwrap_or_else(|_| bad()),
                    u16::try_from(device).unwrap_or_else(|_| bad()),
                    class,
                    (*driver != "-").then_some(*driver),
                    (*group != "-").then(|| group.parse().unwrap_or_else(|_| bad())),
                ));
            }
            _ => bad(),
        }
    }
    host
}

/// One run in the expected file's format: the command, the exit status, stdout and
/// stderr, with the root's path as `$ROOT`.
fn run(host: &HostRoot, args: &[&str], empty_path: &Path) -> String {
    let out = Command::new(bin("gpu-passthrough"))
        .arg("--root")
        .arg(host.root())
        .args(args)
        .env_clear()
        // No libvirtd, systemctl or grubby: the shape alone decides the output.
        .env("PATH", empty_path)
        .output()
        .expect("run gpu-passthrough");
    let root = host.root().display().to_string();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace(&root, "$ROOT");
    format!(
        "$ gpu-passthrough {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status
            .code()
            .map_or("by a signal".to_owned(), |c| c.to_string()),
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[test]
fn every_shapes_runs_give_exactly_the_output_beside_them() {
    let update = std::env::var_os("UPDATE_EXPECTED").is_some();
    let empty_path = tempfile::tempdir().expect("tempdir");
    let mut shapes: Vec<PathBuf> = std::fs::read_dir(shapes_dir())
        .expect("tests/fixtures/hosts")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    shapes.sort();
    assert!(shapes.len() >= 3, "the shapes are gone: {shapes:?}");
    let mut runs = 0;
    let mut differ = Vec::new();
    for shape in &shapes {
        let mut expected_files: Vec<PathBuf> = std::fs::read_dir(shape.join("expected"))
            .unwrap_or_else(|e| panic!("{}/expected: {e}", shape.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        expected_files.sort();
        for file in expected_files {
            // A fresh host per run: a run may write (install --dry-run must not).
            let host = build(&shape.join("host.txt"));
            let expected = std::fs::read_to_string(&file).expect("expected file");
            let command = expected.lines().next().unwrap_or_default();
            let args: Vec<&str> = command
                .strip_prefix("$ gpu-passthrough ")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: the first line must be `$ gpu-passthrough ARGS`",
                        file.display()
                    )
                })
                .split(' ')
                .collect();
            let got = run(&host, &args, empty_path.path());
            runs += 1;
            if got != expected {
                if update {
                    std::fs::write(&file, &got).expect("update the expected file");
                }
                differ.push(format!(
                    "{}:\n--- expected\n{expected}\n--- got\n{got}",
                    file.display()
                ));
            }
        }
    }
    assert!(runs >= 8, "only {runs} runs");
    assert!(
        differ.is_empty(),
        "{} of {runs} runs differ{}:\n{}",
        differ.len(),
        if update {
            " (rewritten: read the diff before you commit it)"
        } else {
            ""
        },
        differ.join("\n")
    );
}
