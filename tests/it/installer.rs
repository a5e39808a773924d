//! gpu-passthrough (the installer and admin CLI), the built binary, on fake hosts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::host::HostRoot;
use integration_tests::{
    argv_recorder, assert_exit, bin, in_ci, read_recorded, stderr, stdout, which, write_file,
    write_link, PciFunction,
};
use serde_json::Value;

const PCI_IDS: &str = "10de  NVIDIA Corporation\n\t10ef  GP102 HDMI Audio Controller\n\t1b02  GP102 [TITAN Xp]\n\t1e87  TU104 [GeForce RTX 2080 Rev. A]\n\t10f8  TU104 HD Audio Controller\n\t1ad8  TU104 USB 3.1 Host Controller\n\t1ad9  TU104 USB Type-C UCSI Controller\n\t1eb8  TU104GL [Tesla T4]\n\t25b6  GA107GL [A16]\n1a03  ASPEED Technology, Inc.\n\t2000  ASPEED Graphics Family\n8086  Intel Corporation\n\t1572  Ethernet Controller X710\n";

/// A hypervisor root with pci.ids, an EL8 kernel command line and an Intel CPU, no
/// PCI functions.
fn bare_host() -> HostRoot {
    let host = HostRoot::new();
    host.pci_ids(PCI_IDS);
    host.cmdline("BOOT_IMAGE=/vmlinuz-4.18.0 ro");
    host.cpu("GenuineIntel", "fpu vmx sse");
    host
}

/// A function in IOMMU group `group`.
fn f<'a>(
    address: &'a str,
    vendor: u16,
    device: u16,
    class: u32,
    driver: Option<&'a str>,
    group: u32,
) -> PciFunction<'a> {
    PciFunction::new(address, vendor, device, class, driver, Some(group))
}

/// The GPU zoo: Titan Xp (2 functions), T4, RTX 2080 (4 functions), the BMC's ASPEED
/// VGA, a NIC.
fn gpu_zoo() -> HostRoot {
    let host = bare_host();
    for func in [
        f(
            "0000:18:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("nouveau"),
            30,
        ),
        f(
            "0000:18:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("snd_hda_intel"),
            30,
        ),
        f(
            "0000:3b:00.0",
            0x10de,
            0x1eb8,
            0x030200,
            Some("vfio-pci"),
            40,
        ),
        f(
            "0000:5e:00.0",
            0x10de,
            0x1e87,
            0x030000,
            Some("vfio-pci"),
            50,
        ),
        f(
            "0000:5e:00.1",
            0x10de,
            0x10f8,
            0x040300,
            Some("vfio-pci"),
            50,
        ),
        f(
            "0000:5e:00.2",
            0x10de,
            0x1ad8,
            0x0c0330,
            Some("vfio-pci"),
            50,
        ),
        f(
            "0000:5e:00.3",
            0x10de,
            0x1ad9,
            0x0c8000,
            Some("vfio-pci"),
            50,
        ),
        f("0000:03:00.0", 0x1a03, 0x2000, 0x030000, Some("ast"), 5),
        f("0000:1a:00.0", 0x8086, 0x1572, 0x020000, Some("i40e"), 31),
    ] {
        host.add(&func);
    }
    host
}

/// The installer's runs on a [`HostRoot`], through `--root`.
trait Installer {
    fn cli(&self, args: &[&str]) -> Command;
    fn run(&self, args: &[&str]) -> Output;
    fn run_with(&self, path: &std::ffi::OsStr, args: &[&str]) -> Output;
    fn json(&self, args: &[&str]) -> Value;
    fn running_with(&self, name: &str, hostdevs: &[&str], metadata: &str);
}

impl Installer for HostRoot {
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gpu-passthrough"));
        c.arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("GPU_PASSTHROUGH_SYSFS")
            .env_remove("GPU_PASSTHROUGH_PROC")
            .env_remove("GPU_PASSTHROUGH_CONFIG")
            .env_remove("GPU_PASSTHROUGH_LIBVIRT_RUN")
            .env_remove("GPU_PASSTHROUGH_PCI_IDS");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cli(args).output().expect("run gpu-passthrough")
    }

    /// Run with `path` as PATH (stand-ins, the real grubby's shim), commands run under
    /// --root as on the host.
    fn run_with(&self, path: &std::ffi::OsStr, args: &[&str]) -> Output {
        self.cli(args)
            .env("PATH", path)
            .env("GPU_PASSTHROUGH_RUN_UNDER_ROOT", "1")
            .output()
            .expect("run gpu-passthrough")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// A running domain with these PCI hostdevs and `metadata` (Nova's, or none).
    fn running_with(&self, name: &str, hostdevs: &[&str], metadata: &str) {
        let mut devices = String::new();
        for a in hostdevs {
            let (d, rest) = a.split_once(':').expect("addr");
            let (b, rest) = rest.split_once(':').expect("addr");
            let (s, func) = rest.split_once('.').expect("addr");
            devices.push_str(&format!("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x{d}' bus='0x{b}' slot='0x{s}' function='0x{func}'/></source></hostdev>"));
        }
        self.running(
            name,
            &format!("<domain type='kvm'><name>{name}</name><memory>1048576</memory>{metadata}<devices>{devices}</devices></domain>"),
        );
    }
}

#[test]
fn scan_lists_every_display_function_with_its_companions() {
    let host = gpu_zoo();
    let v = host.json(&["scan", "--json"]);
    let entries = v.as_array().expect("a list");
    let addresses: Vec<&str> = entries
        .iter()
        .map(|e| e["address"].as_str().expect("address"))
        .collect();
    assert_eq!(
        addresses,
        [
            "0000:03:00.0",
            "0000:18:00.0",
            "0000:18:00.1",
            "0000:3b:00.0",
            "0000:5e:00.0",
            "0000:5e:00.1",
            "0000:5e:00.2",
            "0000:5e:00.3"
        ],
        "the BMC VGA is listed (scan shows all), the NIC is not"
    );
    let titan = &entries[1];
    assert_eq!(titan["vendor_id"], "10de");
    assert_eq!(titan["device_id"], "1b02");
    assert_eq!(titan["class"], "0x030000");
    assert_eq!(titan["name"], "NVIDIA Corporation GP102 [TITAN Xp]");
    assert_eq!(titan["driver"], "nouveau");
    assert_eq!(titan["iommu_group"], 30);
    assert_eq!(
        titan["iommu_group_members"],
        serde_json::json!(["0000:18:00.0", "0000:18:00.1"])
    );
    assert_eq!(titan["nova_device_type"], "type-PCI");
    assert_eq!(titan["in_use_by"], Value::Null);
    assert_eq!(entries[2]["gpu"], "0000:18:00.0");

    let table = stdout(&host.run(&["scan"]));
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert!(
        table.contains("0000:18:00.0   10de:1b02 0x030000 nouveau"),
        "{table}"
    );
    assert!(
        table.contains(" 0000:18:00.1"),
        "companions are indented: {table}"
    );
}

#[test]
fn scan_knows_sriov_and_who_holds_what() {
    let host = bare_host();
    host.sysfs().add(&f(
        "0000:af:00.0",
        0x10de,
        0x25b6,
        0x030200,
        Some("nvidia"),
        60,
    ));
    write_file(
        &host
            .sysfs()
            .device_dir("0000:af:00.0")
            .join("sriov_totalvfs"),
        "16\n",
    );
    host.sysfs().add(&f(
        "0000:af:00.4",
        0x10de,
        0x25b6,
        0x030200,
        Some("nvidia"),
        61,
    ));
    write_link(
        &host.sysfs().device_dir("0000:af:00.4").join("physfn"),
        "../0000:af:00.0",
    );
    host.running_with("instance-00000007", &["0000:af:00.4"], "");
    let v = host.json(&["scan", "--json"]);
    let types: Vec<(&str, &str, &Value)> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().expect("a"),
                e["nova_device_type"].as_str().expect("t"),
                &e["in_use_by"],
            )
        })
        .collect();
    assert_eq!(types[0].1, "type-PF");
    assert_eq!(
        types[1],
        ("0000:af:00.4", "type-VF", &Value::from("instance-00000007"))
    );
}

#[test]
fn a_host_without_gpus_scans_empty_and_has_nothing_for_nova() {
    let host = bare_host();
    host.sysfs().add(&f(
        "0000:1a:00.0",
        0x8086,
        0x1572,
        0x020000,
        Some("i40e"),
        31,
    ));
    assert_eq!(host.json(&["scan", "--json"]), serde_json::json!([]));
    let out = host.run(&["nova-config"]);
    assert_exit(&out, 1, "no NVIDIA GPU found");
}

#[test]
fn status_names_the_domain_nova_instance_and_project() {
    let host = gpu_zoo();
    let nova = "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>gpu-worker-1</nova:name><nova:owner><nova:project uuid='p'>climate \"lab\"</nova:project></nova:owner></nova:instance></metadata>";
    host.running_with("instance-0000002a", &["0000:18:00.0", "0000:18:00.1"], nova);
    let v = host.json(&["status", "--json"]);
    let titan = v
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["address"] == "0000:18:00.0")
        .expect("the Titan Xp");
    assert_eq!(titan["state"], "in-use");
    assert_eq!(titan["domain"], "instance-0000002a");
    assert_eq!(titan["nova_instance"], "gpu-worker-1");
    assert_eq!(titan["nova_project"], "climate \"lab\"");
    let t4 = v
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["address"] == "0000:3b:00.0")
        .expect("T4");
    assert_eq!(t4["state"], "free");

    let prom = stdout(&host.run(&["status", "--prometheus"]));
    assert!(
        prom.contains("# TYPE gpu_passthrough_gpu_in_use gauge\n"),
        "{prom}"
    );
    assert!(
        prom.contains("gpu_passthrough_gpu_in_use{address=\"0000:18:00.0\",device=\"10de:1b02\",name=\"NVIDIA Corporation GP102 [TITAN Xp]\",domain=\"instance-0000002a\",nova_instance=\"gpu-worker-1\",project=\"climate \\\"lab\\\"\"} 1\n"),
        "{prom}"
    );
    assert!(prom.contains("gpu_passthrough_gpu_in_use{address=\"0000:3b:00.0\",device=\"10de:1eb8\",name=\"NVIDIA Corporation TU104GL [Tesla T4]\"} 0\n"), "{prom}");
    let human = stdout(&host.run(&["status"]));
    assert!(human.contains("0000:18:00.0 10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]: in use by instance-0000002a (Nova instance 'gpu-worker-1'"), "{human}");
}

/// The JSON objects of `KEY = {...}` lines, in order.
fn json_lines(text: &str, key: &str) -> Vec<Value> {
    let prefix = format!("{key} = ");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|j| serde_json::from_str(j).expect("each such line is JSON"))
        .collect()
}

#[test]
fn nova_config_offers_each_models_gpu_function_under_an_alias_from_its_ids() {
    let host = gpu_zoo();
    let out = host.run(&["nova-config", "--release", "2024.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        json_lines(&text, "device_spec"),
        vec![
            serde_json::json!({"vendor_id": "10de", "product_id": "1b02"}),
            serde_json::json!({"vendor_id": "10de", "product_id": "1e87"}),
            serde_json::json!({"vendor_id": "10de", "product_id": "1eb8"}),
        ],
        "the GPU functions only, never audio/USB, never the BMC VGA:\n{text}"
    );
    assert_eq!(
        json_lines(&text, "alias"),
        vec![
            serde_json::json!({"vendor_id": "10de", "product_id": "1b02", "device_type": "type-PCI", "name": "10de_1b02"}),
            serde_json::json!({"vendor_id": "10de", "product_id": "1e87", "device_type": "type-PCI", "name": "10de_1e87"}),
            serde_json::json!({"vendor_id": "10de", "product_id": "1eb8", "device_type": "type-PCI", "name": "10de_1eb8"}),
        ]
    );
    let flavors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("openstack flavor set "))
        .collect();
    assert_eq!(
        flavors,
        vec![
            "openstack flavor set gpu.10de_1b02 --property \"pci_passthrough:alias\"=\"10de_1b02:1\"",
            "openstack flavor set gpu.10de_1e87 --property \"pci_passthrough:alias\"=\"10de_1e87:1\"",
            "openstack flavor set gpu.10de_1eb8 --property \"pci_passthrough:alias\"=\"10de_1eb8:1\"",
        ]
    );
    assert!(
        text.contains("# gpu.10de_1b02: NVIDIA Corporation GP102 [TITAN Xp]\n"),
        "{text}"
    );
    assert!(text.contains("ram_allocation_ratio = 1.0"), "{text}");

    let old = stdout(&host.run(&["nova-config", "--release", "yoga"]));
    assert_eq!(json_lines(&old, "passthrough_whitelist").len(), 3, "{old}");
    assert!(!old.contains("device_spec"), "{old}");
    let bad = host.run(&["nova-config", "--release", "folsom"]);
    assert_exit(&bad, 2, "unknown OpenStack release");
}

#[test]
fn nova_config_filters_are_the_releases_defaults_plus_pci_passthrough() {
    let host = gpu_zoo();
    let filters = |release: &str| -> String {
        let text = stdout(&host.run(&["nova-config", "--release", release]));
        text.lines()
            .find_map(|l| l.strip_prefix("enabled_filters = "))
            .unwrap_or_else(|| panic!("no enabled_filters for {release}: {text}"))
            .to_owned()
    };
    assert_eq!(filters("queens"), "RetryFilter,AvailabilityZoneFilter,ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,PciPassthroughFilter");
    assert_eq!(filters("yoga"), "AvailabilityZoneFilter,ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,PciPassthroughFilter");
    assert_eq!(filters("2024.1"), "ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,PciPassthroughFilter");
}

#[test]
fn two_models_of_one_chip_get_two_aliases_and_siblings_only_on_request() {
    let host = bare_host();
    for func in [
        f(
            "0000:18:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("vfio-pci"),
            30,
        ),
        f(
            "0000:18:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("vfio-pci"),
            30,
        ),
        f(
            "0000:86:00.0",
            0x10de,
            0x1b06,
            0x030000,
            Some("vfio-pci"),
            70,
        ),
        f(
            "0000:86:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("vfio-pci"),
            70,
        ),
    ] {
        host.sysfs().add(&func);
    }
    write_file(
        &host.path("usr/share/hwdata/pci.ids"),
        format!("{PCI_IDS}10de  NVIDIA Corporation\n\t1b06  GP102 [GeForce GTX 1080 Ti]\n"),
    );
    let out = host.run(&["nova-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let names: Vec<String> = json_lines(&text, "alias")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, vec!["10de_1b02", "10de_1b06"], "{text}");
    assert!(!text.contains("10ef"), "no audio by default: {text}");

    let out = host.run(&["nova-config", "--with-siblings"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(stderr(&out).contains("Nova does not keep the functions of one card together"));
    assert!(text.contains("# WARNING: Nova does not keep"), "{text}");
    let names: Vec<String> = json_lines(&text, "alias")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, vec!["10de_10ef", "10de_1b02", "10de_1b06"], "{text}");
    assert!(text.contains("openstack flavor set gpu.10de_1b06 --property \"pci_passthrough:alias\"=\"10de_1b06:1,10de_10ef:1\"\n"), "{text}");
}

#[test]
fn check_fails_on_an_unprepared_intel_host_and_names_the_fixes() {
    let host = gpu_zoo();
    let out = host.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for needle in [
        "PASS cpu-virtualization: GenuineIntel with vmx/svm",
        "FAIL iommu-cmdline: Intel CPU and intel_iommu=on is not on the kernel command line",
        "PASS iommu-active",
        "FAIL vfio-modules",
        "FAIL nouveau: 0000:18:00.0 (10de:1b02) is bound to nouveau",
        "FAIL gpu-driver: 0000:18:00.1 (10de:10ef) is bound to 'snd_hda_intel'",
        "PASS gpu-driver: 0000:3b:00.0 (10de:1eb8) is on vfio-pci",
        "FAIL diversion",
        "FAIL hook",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("0000:03:00.0"),
        "the BMC VGA is not checked: {text}"
    );
    let out = host.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v
        .as_array()
        .expect("list")
        .iter()
        .any(|c| c["status"] == "FAIL" && c["check"] == "nouveau"));
}

#[test]
fn check_on_amd_needs_no_intel_iommu_and_reads_nova_conf() {
    let host = gpu_zoo();
    host.cpu("AuthenticAMD", "fpu svm");
    write_file(
        &host.path("proc/cmdline"),
        "ro iommu=pt rd.driver.pre=vfio-pci\n",
    );
    write_file(
        &host.path("etc/nova/nova.conf"),
        "[DEFAULT]\nram_allocation_ratio = 1.5\n",
    );
    let text = stdout(&host.run(&["check", "--gpu", "10de:1eb8"]));
    assert!(text.contains("PASS iommu-cmdline"), "{text}");
    assert!(
        text.contains("FAIL nova: ") && text.contains("ram_allocation_ratio is 1.5"),
        "{text}"
    );
    assert!(
        !text.contains("0000:18:00.0"),
        "--gpu limits the GPUs: {text}"
    );
    let usage = host.run(&["check", "--gpu", "nvidia"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

/// A root with a "real qemu" (the argv recorder) and the packaged wrapper.
fn qemu_root() -> HostRoot {
    let host = bare_host();
    let libexec = host.path("usr/libexec");
    std::fs::create_dir_all(libexec.join("gpu-passthrough")).expect("mkdir");
    std::fs::copy(argv_recorder(), libexec.join("qemu-kvm")).expect("real qemu");
    std::fs::copy(
        bin("qemu-kvm-wrapper"),
        libexec.join("gpu-passthrough/qemu-kvm-wrapper"),
    )
    .expect("wrapper");
    host
}

fn content(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[test]
fn divert_and_undivert_round_trip_idempotently() {
    let host = qemu_root();
    let qemu = host.path("usr/libexec/qemu-kvm");
    let orig = host.path("usr/libexec/qemu-kvm.orig");
    let real = content(&qemu);
    let wrapper = content(&bin("qemu-kvm-wrapper"));

    let dry = host.run(&["divert", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would: install the wrapper"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(content(&qemu), real, "--dry-run changes nothing");
    assert!(!orig.exists());

    let out = host.run(&["divert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(content(&qemu), wrapper);
    assert_eq!(content(&orig), real);
    assert!(is_executable(&qemu) && is_executable(&orig));
    assert!(
        stdout(&out).contains("not run under --root: restorecon -F"),
        "{}",
        stdout(&out)
    );

    // On a diverted host divert is still the repair command: it runs restorecon.
    let again = host.run(&["divert"]);
    assert_eq!(
        stdout(&again),
        format!(
            "{q} is already the wrapper and {o} the real qemu\nnot run under --root: restorecon -F {q} {o}\n",
            q = qemu.display(),
            o = orig.display()
        )
    );

    // The diverted qemu-kvm works: the wrapper runs the real qemu.
    write_file(
        &host.path("config.toml"),
        format!("[wrapper]\ntarget = {:?}\n", orig.display()),
    );
    let ran = Command::new(&qemu)
        .args(["-S", "-cpu", "host"])
        .env("GPU_PASSTHROUGH_CONFIG", host.path("config.toml"))
        .env("ARGV_RECORDER_OUT", host.path("argv"))
        .status()
        .expect("run qemu-kvm");
    assert!(ran.success());
    assert_eq!(read_recorded(&host.path("argv")).argv[1], b"-S");

    // A qemu-kvm update overwrites the wrapper: divert takes the new one as .orig.
    let mut newer = real.clone();
    newer.extend_from_slice(b"qemu-kvm 6.2.0-41");
    std::fs::write(&qemu, &newer).expect("update");
    let out = host.run(&["divert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(content(&orig), newer);
    assert_eq!(content(&qemu), wrapper);

    let out = host.run(&["undivert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(content(&qemu), newer);
    assert!(!orig.exists());
    assert!(stdout(&host.run(&["undivert"])).contains("nothing to do"));
}

#[test]
fn divert_never_puts_the_wrapper_onto_itself() {
    let host = qemu_root();
    let qemu = host.path("usr/libexec/qemu-kvm");
    std::fs::copy(bin("qemu-kvm-wrapper"), &qemu).expect("wrapper as qemu-kvm");
    let out = host.run(&["divert"]);
    assert_exit(&out, 1, "not diverting the wrapper onto itself");
    assert!(!host.path("usr/libexec/qemu-kvm.orig").exists());

    // A wrapper at both names is the same loss, whatever made it.
    std::fs::copy(
        bin("qemu-kvm-wrapper"),
        host.path("usr/libexec/qemu-kvm.orig"),
    )
    .expect("wrapper as .orig");
    assert_exit(
        &host.run(&["divert"]),
        1,
        "not diverting the wrapper onto itself",
    );
    let check = stdout(&host.run(&["check"]));
    assert!(check.contains("FAIL diversion"), "{check}");
    std::fs::remove_file(host.path("usr/libexec/qemu-kvm.orig")).expect("rm");

    std::fs::remove_file(&qemu).expect("rm");
    let out = host.run(&["divert"]);
    assert_exit(&out, 1, "qemu-kvm does not exist");
}

/// strace's fault injection into each rename/link/write/fsync that divert and undivert
/// make: whatever fails, qemu-kvm is whole and executable, and a clean run finishes.
#[test]
fn qemu_kvm_stays_whole_whatever_syscall_fails() {
    if which("strace").is_none() {
        assert!(!in_ci(), "strace is missing in CI (apt-get install strace)");
        eprintln!("SKIP: strace is not installed");
        return;
    }
    let wrapper = content(&bin("qemu-kvm-wrapper"));
    let mut injected = 0;
    for syscall in ["rename", "link", "write", "fsync", "openat", "fchmod"] {
        for when in 1..=4 {
            for command in ["divert", "undivert"] {
                let host = qemu_root();
                let qemu = host.path("usr/libexec/qemu-kvm");
                let real = content(&qemu);
                if command == "undivert" {
                    assert!(host.run(&["divert"]).status.success());
                }
                let out = Command::new("strace")
                    .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                    .arg(format!("inject={syscall}:error=EIO:when={when}"))
                    .arg(bin("gpu-passthrough"))
                    .arg("--root")
                    .arg(host.root())
                    .arg(command)
                    .output()
                    .expect("run strace");
                if !out.status.success() {
                    injected += 1;
                }
                let now = content(&qemu);
                assert!(
                    now == real || now == wrapper,
                    "{command} with {syscall} #{when} failing left qemu-kvm neither the real qemu nor the wrapper"
                );
                assert!(is_executable(&qemu), "{command}, {syscall} #{when}");
                // A clean run afterwards reaches the intended state.
                let out = host.run(&[command]);
                assert!(
                    out.status.success(),
                    "{command} after {syscall} #{when}: {}",
                    stderr(&out)
                );
                let expected = if command == "divert" { &wrapper } else { &real };
                assert_eq!(
                    &content(&qemu),
                    expected,
                    "{command} after {syscall} #{when}"
                );
            }
        }
    }
    assert!(injected > 10, "the injections made runs fail ({injected})");
}

#[test]
fn help_teaches_and_man_pages_are_generated() {
    let host = bare_host();
    let help = stdout(&host.run(&["--help"]));
    assert!(
        help.contains("Examples:") && help.contains("gpu-passthrough install --dry-run"),
        "{help}"
    );
    assert!(
        help.lines().all(|l| l.chars().count() <= 80),
        "80 columns: {help}"
    );
    let dir = host.path("man");
    let out = host.run(&["man", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.join("gpu-passthrough-divert.8")).expect("man page");
    assert!(page.contains(".TH gpu-passthrough-divert 8"), "{page}");
    assert_eq!(host.run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        host.run(&["status", "--json", "--prometheus"])
            .status
            .code(),
        Some(2)
    );
}

/// Every file and directory under the root but sys/ and proc/: path, mode, content.
fn snapshot(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if rel == "sys" || rel == "proc" {
                continue;
            }
            let meta = p.symlink_metadata().expect("stat");
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else if meta.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            out.push((rel, meta.permissions().mode(), content));
            if meta.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// A hypervisor ready for `install`: GPUs, the packaged binaries, /etc/default/grub.
fn install_root() -> HostRoot {
    let host = gpu_zoo();
    let libexec = host.path("usr/libexec");
    std::fs::create_dir_all(libexec.join("gpu-passthrough")).expect("mkdir");
    std::fs::copy(argv_recorder(), libexec.join("qemu-kvm")).expect("real qemu");
    for b in ["qemu-kvm-wrapper", "gpu-passthrough-hook"] {
        std::fs::copy(bin(b), libexec.join("gpu-passthrough").join(b)).expect("binary");
    }
    let grub = host.path("etc/default/grub");
    write_file(
        &grub,
        "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\n",
    );
    std::fs::set_permissions(&grub, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    host
}

/// A PATH whose libvirtd says `version`.
fn libvirtd_path(host: &HostRoot, version: &str) -> std::ffi::OsString {
    let dir = host.path("fakebin");
    integration_tests::write_script(
        &dir.join("libvirtd"),
        &format!("#!/bin/sh\necho 'libvirtd (libvirt) {version}'\n"),
    );
    std::env::join_paths([dir, PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).expect("PATH")
}

#[test]
fn install_dry_run_shows_diffs_and_commands_and_changes_nothing() {
    let host = install_root();
    let before = snapshot(host.root());
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "--- /dev/null\n+++ b/etc/modprobe.d/gpu-passthrough.conf\n",
        "+options vfio-pci ids=10de:10ef,10de:10f8,10de:1ad8,10de:1ad9,10de:1b02,10de:1e87,10de:1eb8\n",
        "+softdep nouveau pre: vfio-pci\n",
        "+blacklist nouveau\n",
        "+++ b/etc/modules-load.d/gpu-passthrough.conf\n",
        "+add_drivers+=\" vfio vfio_iommu_type1 vfio_pci \"\n",
        "--- a/etc/default/grub\n+++ b/etc/default/grub\n",
        "-GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\n",
        "+GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet intel_iommu=on iommu=pt rd.driver.pre=vfio-pci\"\n",
        "+++ b/etc/gpu-passthrough/config.toml\n",
        "link /etc/libvirt/hooks/qemu.d/gpu-passthrough -> /usr/libexec/gpu-passthrough/gpu-passthrough-hook\n",
        "divert /usr/libexec/qemu-kvm to the wrapper",
        "run: grubby --update-kernel=ALL '--args=intel_iommu=on iommu=pt rd.driver.pre=vfio-pci' --no-etc-grub-update\n",
        "run: dracut -f\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("1a03:2000"),
        "the BMC VGA is left alone: {text}"
    );
    assert_eq!(snapshot(host.root()), before, "--dry-run changed something");
}

#[test]
fn install_then_uninstall_gives_the_host_back_exactly() {
    let host = install_root();
    let before = snapshot(host.root());
    let out = host.run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("done. Next: reboot"),
        "{}",
        stdout(&out)
    );
    let grub = std::fs::read_to_string(host.path("etc/default/grub")).expect("grub");
    assert_eq!(
        grub,
        "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet intel_iommu=on iommu=pt rd.driver.pre=vfio-pci\"\n"
    );
    assert_eq!(
        std::fs::read_link(host.path("etc/libvirt/hooks/qemu.d/gpu-passthrough"))
            .expect("hook link"),
        Path::new("/usr/libexec/gpu-passthrough/gpu-passthrough-hook")
    );
    assert!(host::is_wrapper(&host.path("usr/libexec/qemu-kvm")));
    let installed = snapshot(host.root());

    let again = host.run(&["install"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        "this host is set up already: nothing to change\n"
    );
    assert_eq!(
        snapshot(host.root()),
        installed,
        "a second install changes nothing"
    );

    let dry = host.run(&["uninstall", "--dry-run"]);
    assert!(
        stdout(&dry).contains("would: restore /etc/default/grub as it was before install"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(snapshot(host.root()), installed);

    let out = host.run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        snapshot(host.root()),
        before,
        "uninstall left the host different"
    );
    assert!(stdout(&host.run(&["uninstall"])).contains("nothing to undo"));
}

mod host {
    pub fn is_wrapper(path: &std::path::Path) -> bool {
        host_model::is_wrapper_binary(&std::fs::read(path).expect("read"))
    }
}

#[test]
fn install_on_amd_adds_no_intel_iommu_and_gpu_selects() {
    let host = install_root();
    host.cpu("AuthenticAMD", "svm");
    let out = host.run(&["install", "--dry-run", "--gpu", "10de:1eb8"]);
    let text = stdout(&out);
    assert!(
        text.contains(
            "+GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet iommu=pt rd.driver.pre=vfio-pci\"\n"
        ),
        "{text}"
    );
    assert!(text.contains("+options vfio-pci ids=10de:1eb8\n"), "{text}");
}

#[test]
fn install_refuses_a_host_without_nvidia_gpus_and_changes_nothing() {
    let host = install_root();
    for a in [
        "0000:18:00.0",
        "0000:18:00.1",
        "0000:3b:00.0",
        "0000:5e:00.0",
        "0000:5e:00.1",
        "0000:5e:00.2",
        "0000:5e:00.3",
    ] {
        std::fs::remove_file(host.sysfs().root().join("bus/pci/devices").join(a)).expect("rm");
    }
    let before = snapshot(host.root());
    let out = host.run(&["install"]);
    assert_exit(&out, 1, "no GPU to set up");
    assert_eq!(snapshot(host.root()), before);
}

#[test]
fn a_failing_step_undoes_the_steps_before_it() {
    let host = install_root();
    // hooks/qemu.d is a file, so linking the hook fails after every file is written.
    write_file(&host.path("etc/libvirt/hooks/qemu.d"), "in the way");
    let before = snapshot(host.root());
    let out = host.run(&["install"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("install failed: ") && err.contains("qemu.d"),
        "{err}"
    );
    assert!(err.contains("undoing the 4 step(s) done"), "{err}");
    assert!(err.contains("install failed and was undone"), "{err}");
    assert_eq!(
        snapshot(host.root()),
        before,
        "the written files are gone again"
    );
}

#[test]
fn old_libvirt_uses_the_single_hook_only_when_it_is_free() {
    let host = install_root();
    let path = libvirtd_path(&host, "6.0.0");
    let out = host
        .cli(&["install", "--dry-run"])
        .env("PATH", &path)
        .output()
        .expect("run");
    assert!(
        stdout(&out).contains("link /etc/libvirt/hooks/qemu -> "),
        "{}",
        stdout(&out)
    );

    write_file(
        &host.path("etc/libvirt/hooks/qemu"),
        "#!/bin/sh\n# the site's own hook\n",
    );
    let before = snapshot(host.root());
    let out = host
        .cli(&["install"])
        .env("PATH", &path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("exists and is not ours") && err.contains("Merge ours into it"),
        "{err}"
    );
    assert_eq!(snapshot(host.root()), before);

    // libvirt 8.0 reads hooks/qemu.d: the foreign hook is no obstacle.
    let path = libvirtd_path(&host, "8.0.0");
    let out = host
        .cli(&["install", "--dry-run"])
        .env("PATH", &path)
        .output()
        .expect("run");
    assert!(
        stdout(&out).contains("link /etc/libvirt/hooks/qemu.d/gpu-passthrough"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn uninstall_keeps_what_the_operator_changed_since() {
    let host = install_root();
    assert!(host.run(&["install"]).status.success());
    let grub = host.path("etc/default/grub");
    let text = std::fs::read_to_string(&grub)
        .expect("grub")
        .replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=10");
    std::fs::write(&grub, text).expect("operator edit");
    assert!(host.run(&["uninstall"]).status.success());
    assert_eq!(
        std::fs::read_to_string(&grub).expect("grub"),
        "GRUB_TIMEOUT=10\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\n"
    );
}

#[test]
fn a_damaged_state_file_is_named_and_nothing_is_touched() {
    let host = install_root();
    assert!(host.run(&["install"]).status.success());
    let state = host.path("var/lib/gpu-passthrough/state.json");
    std::fs::write(&state, "{ not json").expect("damage");
    let before = snapshot(host.root());
    for args in [&["uninstall"][..], &["install", "--gpu", "10de:1eb8"]] {
        assert_exit(&host.run(args), 1, "state.json is damaged");
    }
    assert_eq!(snapshot(host.root()), before);
}

#[test]
fn two_installs_cannot_interleave() {
    let host = install_root();
    let lock_path = host.path("var/lib/gpu-passthrough/lock");
    write_file(&lock_path, "");
    let held = std::fs::File::open(&lock_path).expect("open lock");
    held.lock().expect("hold the lock");
    let out = host.run(&["install"]);
    assert_exit(&out, 1, "another gpu-passthrough install");
    drop(held);
    assert!(host.run(&["install"]).status.success());
}

/// Stand-ins for grubby, dracut, semodule, restorecon and libvirtd that append their
/// argv to a log; `fail` makes one of them fail.
fn stand_ins(host: &HostRoot, fail: Option<&str>) -> std::ffi::OsString {
    let dir = host.path("standins");
    let log = host.path("commands.log");
    for tool in ["grubby", "dracut", "semodule", "restorecon"] {
        let status = if Some(tool) == fail {
            "echo \"$0: boom\" >&2; exit 3"
        } else {
            "exit 0"
        };
        integration_tests::write_script(
            &dir.join(tool),
            &format!(
                "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> {}\n{status}\n",
                log.display()
            ),
        );
    }
    // systemctl answers is-active/is-enabled from systemctl.states ("UNIT is-active"
    // lines) without logging them; what it is told to do goes to the log.
    integration_tests::write_script(
        &dir.join("systemctl"),
        &format!(
            "#!/bin/sh\ncase \"$1\" in is-active|is-enabled)\n  if grep -qx \"$2 $1\" {states} 2>/dev/null; then\n    [ \"$1\" = is-active ] && echo active || echo enabled; exit 0\n  fi\n  echo inactive; exit 3;;\nesac\necho \"systemctl $*\" >> {log}\n",
            states = host.path("systemctl.states").display(),
            log = log.display()
        ),
    );
    integration_tests::write_script(
        &dir.join("libvirtd"),
        "#!/bin/sh\necho 'libvirtd (libvirt) 8.0.0'\n",
    );
    std::env::join_paths([dir, PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).expect("PATH")
}

#[test]
fn install_runs_grubby_restorecon_dracut_and_uninstall_reverts_them() {
    let host = install_root();
    write_file(
        &host.path("usr/lib/systemd/system/gpu-passthrough-metrics.timer"),
        "[Timer]\n",
    );
    let path = stand_ins(&host, None);
    let run = |args: &[&str]| host.run_with(&path, args);
    let out = run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = host.root().display().to_string();
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert_eq!(
        log,
        format!(
            "restorecon -F {root}/usr/libexec/qemu-kvm {root}/usr/libexec/qemu-kvm.orig\n\
             grubby --update-kernel=ALL --args=intel_iommu=on iommu=pt rd.driver.pre=vfio-pci --no-etc-grub-update\n\
             restorecon -R /etc/gpu-passthrough\n\
             dracut -f\n\
             systemctl enable --now gpu-passthrough-metrics.timer\n"
        )
    );
    std::fs::remove_file(host.path("commands.log")).expect("rm log");
    let out = run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The kernel arguments come out of the recorded files, never through grubby
    // --remove-args (which strips arguments that were there before, too).
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert_eq!(
        log,
        format!(
            "systemctl disable --now gpu-passthrough-metrics.timer\n\
             restorecon -F {root}/usr/libexec/qemu-kvm\ndracut -f\n"
        )
    );
}

#[test]
fn a_failing_command_is_named_in_full_and_install_is_undone() {
    let host = install_root();
    let path = stand_ins(&host, Some("dracut"));
    let before: Vec<_> = snapshot(host.root())
        .into_iter()
        .filter(|(p, ..)| !p.starts_with("standins"))
        .collect();
    let out = host
        .cli(&["install"])
        .env("PATH", &path)
        .env("GPU_PASSTHROUGH_RUN_UNDER_ROOT", "1")
        .output()
        .expect("run");
    assert_exit(&out, 1, "`dracut -f` failed (exit status: 3): ");
    assert!(
        stderr(&out).contains("dracut: boom"),
        "the child's stderr: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("install failed and was undone"),
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert!(
        !log.contains("--remove-args"),
        "never grubby --remove-args: {log}"
    );
    let after: Vec<_> = snapshot(host.root())
        .into_iter()
        .filter(|(p, ..)| !p.starts_with("standins") && p != "commands.log")
        .collect();
    assert_eq!(
        after, before,
        "qemu-kvm, the hook, every file and /var/lib are as before"
    );
    assert!(stdout(&host.run(&["uninstall"])).contains("nothing to undo"));
}

#[test]
fn check_passes_on_a_host_after_install_and_reboot() {
    let host = install_root();
    let path = libvirtd_path(&host, "8.0.0");
    let out = host
        .cli(&["install"])
        .env("PATH", &path)
        .output()
        .expect("install");
    assert!(out.status.success(), "{}", stderr(&out));
    // What the reboot brings: the arguments on the running kernel, vfio-pci loaded and
    // bound to every function of the NVIDIA GPUs.
    write_file(
        &host.path("proc/cmdline"),
        "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt rd.driver.pre=vfio-pci\n",
    );
    std::fs::create_dir_all(host.sysfs().root().join("module/vfio_pci")).expect("module");
    for (a, d, class) in [
        ("0000:18:00.0", 0x1b02, 0x030000),
        ("0000:18:00.1", 0x10ef, 0x040300),
    ] {
        host.sysfs()
            .add(&f(a, 0x10de, d, class, Some("vfio-pci"), 30));
    }
    let out = host
        .cli(&["check"])
        .env("PATH", &path)
        .output()
        .expect("check");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(
        text.contains("PASS libvirt: libvirt 8.0 reads hooks/qemu.d"),
        "{text}"
    );
    assert!(text.contains("PASS diversion"), "{text}");
    assert!(text.contains("PASS hook"), "{text}");
    assert!(text.contains("PASS config"), "{text}");
}

#[test]
fn an_unreadable_pci_function_is_named_and_the_scan_goes_on() {
    let host = gpu_zoo();
    write_file(
        &host.sysfs().device_dir("0000:1a:00.0").join("class"),
        "garbage\n",
    );
    let out = host.run(&["scan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: PCI function 0000:1a:00.0 left out: ")
            && err.contains("class holds \"garbage\""),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v.as_array().expect("list").len(),
        8,
        "the GPUs are all there"
    );
}

// Issue 10, section 1: never bind anything but the GPU card's own functions.

/// A Titan Xp (0000:18:00.0, .1) in IOMMU group 39 with the board's NIC at function 2
/// of the same slot (8086:15b8, e1000e: a board without ACS), and a T4 of its own.
fn titan_with_nic_in_its_slot() -> HostRoot {
    let host = install_root();
    for func in [
        f(
            "0000:18:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("nouveau"),
            39,
        ),
        f(
            "0000:18:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("snd_hda_intel"),
            39,
        ),
        f("0000:18:00.2", 0x8086, 0x15b8, 0x020000, Some("e1000e"), 39),
    ] {
        host.sysfs().add(&func);
    }
    // Only the Titan and the T4 on this host.
    for gone in [
        "0000:5e:00.0",
        "0000:5e:00.1",
        "0000:5e:00.2",
        "0000:5e:00.3",
    ] {
        std::fs::remove_file(host.path(&format!("sys/bus/pci/devices/{gone}"))).expect("rm");
    }
    host
}

fn modprobe_ids(dry_run: &str) -> Vec<String> {
    let line = dry_run
        .lines()
        .find_map(|l| l.strip_prefix("+options vfio-pci ids="))
        .unwrap_or_else(|| panic!("no ids line in:\n{dry_run}"));
    line.split(',').map(str::to_owned).collect()
}

#[test]
fn a_nic_in_the_gpus_slot_is_never_bound_and_that_gpu_is_left_out() {
    let host = titan_with_nic_in_its_slot();
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(modprobe_ids(&text), vec!["10de:1eb8"], "{text}");
    let why = "GPU 0000:18:00.0 (10de:1b02) cannot be passed through without taking 0000:18:00.2 (8086:15b8 Intel Corporation, driver e1000e) from the host";
    assert!(stderr(&out).contains(why), "{}", stderr(&out));
    assert!(text.contains(&format!("note: left out: {why}")), "{text}");

    // Named by the operator: install stops.
    let out = host.run(&["install", "--dry-run", "--gpu", "10de:1b02"]);
    assert_exit(&out, 1, why);
    assert_exit(&out, 1, "enable ACS");

    // scan and check say so too.
    let v = host.json(&["scan", "--json"]);
    let rows: Vec<(String, String, Value)> = v
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["gpu"] == "0000:18:00.0")
        .map(|e| {
            (
                e["address"].as_str().expect("address").to_owned(),
                e["role"].as_str().expect("role").to_owned(),
                e["problem"].clone(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("0000:18:00.0", "gpu")
    );
    assert!(
        rows[0].2.as_str().expect("a problem").starts_with(why),
        "{rows:?}"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), &rows[1].2),
        ("0000:18:00.1", "card", &Value::Null)
    );
    assert_eq!(
        (rows[2].0.as_str(), rows[2].1.as_str()),
        ("0000:18:00.2", "group-member")
    );
    assert!(rows[2]
        .2
        .as_str()
        .expect("why it blocks")
        .contains("e1000e"));
    assert!(stdout(&host.run(&["scan"])).contains(&format!("unusable: {why}")));
    let check = stdout(&host.run(&["check"]));
    assert!(
        check.contains(&format!("FAIL iommu-group: {why}")),
        "{check}"
    );

    // nova-config offers neither the NIC nor the Titan.
    let nova = stdout(&host.run(&["nova-config"]));
    assert_eq!(
        json_lines(&nova, "device_spec"),
        vec![serde_json::json!({"vendor_id": "10de", "product_id": "1eb8"})],
        "{nova}"
    );
    let aliases: Vec<Value> = json_lines(&nova, "alias");
    assert_eq!(aliases.len(), 1, "{nova}");
    assert_eq!(aliases[0]["name"], "10de_1eb8");
    assert!(nova.contains("# Not offered: GPU 0000:18:00.0"), "{nova}");
}

#[test]
fn a_nic_on_another_bus_behind_the_same_root_port_is_not_the_cards() {
    let host = titan_with_nic_in_its_slot();
    std::fs::remove_file(host.path("sys/bus/pci/devices/0000:18:00.2")).expect("rm");
    std::fs::remove_file(host.path("sys/kernel/iommu_groups/39/devices/0000:18:00.2")).expect("rm");
    host.sysfs()
        .add(&f(
            "0000:19:00.0",
            0x8086,
            0x15b8,
            0x020000,
            Some("e1000e"),
            39,
        ))
        .add(&f(
            "0000:17:00.0",
            0x8086,
            0x2030,
            0x060400,
            Some("pcieport"),
            39,
        ));
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(modprobe_ids(&stdout(&out)), vec!["10de:1eb8"]);
    assert!(
        stderr(&out)
            .contains("without taking 0000:19:00.0 (8086:15b8 Intel Corporation, driver e1000e)"),
        "the bridge is no obstacle, the NIC is: {}",
        stderr(&out)
    );
    // Unbound, the NIC is named in scan but does not stand in the way.
    host.sysfs()
        .add(&f("0000:19:00.0", 0x8086, 0x15b8, 0x020000, None, 39));
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        modprobe_ids(&stdout(&out)),
        vec!["10de:10ef", "10de:1b02", "10de:1eb8"]
    );
}

#[test]
fn install_stops_when_the_ids_would_take_a_gpu_left_out() {
    let host = titan_with_nic_in_its_slot();
    // A second Titan Xp, in a group of its own: usable. Its ids would bind the first.
    host.sysfs()
        .add(&f(
            "0000:86:00.0",
            0x10de,
            0x1b02,
            0x030000,
            Some("nouveau"),
            70,
        ))
        .add(&f(
            "0000:86:00.1",
            0x10de,
            0x10ef,
            0x040300,
            Some("snd_hda_intel"),
            70,
        ));
    let before = snapshot(host.root());
    let out = host.run(&["install"]);
    assert_exit(
        &out,
        1,
        "would also take 0000:18:00.0 (10de:1b02, driver nouveau) and 0000:18:00.1 (10de:10ef, driver snd_hda_intel)",
    );
    assert_eq!(snapshot(host.root()), before, "nothing changed");
}

// Issue 10, section 5: uninstall gives back exactly what was there, tried with the
// real EL grubby (../shared/tools/grubby) on EL8 and EL9 boot layouts.

/// The operator's /etc/default/grub of the issue: two spaces, their own iommu=pt, a
/// comment after the quotes, no final newline.
const SITE_GRUB: &str =
    "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto  rhgb quiet iommu=pt\"  # site default";

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

fn grubby_sandbox() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/grubby/grubby-sandbox")
}

/// PATH for install with the real grubby of `variant` acting on the host's root, and
/// stand-ins (logging to commands.log) for dracut and restorecon. `None` when the
/// sandbox cannot run here (outside CI: skipped; in CI: a failure).
fn real_grubby_path(host: &HostRoot, variant: &str) -> Option<std::ffi::OsString> {
    let sandbox = grubby_sandbox();
    let missing = if !sandbox.exists() {
        Some(format!(
            "{} (../shared beside the repository)",
            sandbox.display()
        ))
    } else if which("grub-editenv").is_none() {
        Some("grub-editenv (apt-get install grub-common)".to_owned())
    } else if which("unshare").is_none() || !is_root() {
        Some("root and unshare, for grubby-sandbox's mount namespace".to_owned())
    } else {
        None
    };
    if let Some(what) = missing {
        integration_tests::missing_prerequisite(&what);
        return None;
    }
    let path = stand_ins(host, None);
    let dir = host.path("standins");
    integration_tests::write_script(
        &dir.join("grubby"),
        &format!(
            "#!/bin/sh\necho \"grubby $*\" >> {}\nexec {} {variant} {} \"$@\"\n",
            host.path("commands.log").display(),
            sandbox.display(),
            host.root().display()
        ),
    );
    Some(path)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn grubenv(host: &HostRoot, vars: &[&str]) {
    let env = host.path("boot/grub2/grubenv");
    std::fs::create_dir_all(env.parent().expect("parent")).expect("mkdir");
    let status = Command::new("grub-editenv")
        .arg(&env)
        .arg("create")
        .status()
        .expect("grub-editenv");
    assert!(status.success());
    let status = Command::new("grub-editenv")
        .arg(&env)
        .arg("set")
        .args(vars)
        .status()
        .expect("grub-editenv");
    assert!(status.success());
}

/// An EL8 boot layout: entries that take `$kernelopts` from grubenv, no
/// /etc/kernel/cmdline (grubby creates it).
fn el8_layout(host: &HostRoot) {
    let entry = |version: &str| {
        format!(
            "title CentOS Stream ({version}) 8\nversion {version}\nlinux /vmlinuz-{version}\n\
             initrd /initramfs-{version}.img $tuned_initrd\noptions $kernelopts $tuned_params\n\
             id centos-20231010-{version}\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class kernel\n"
        )
    };
    for version in ["4.18.0-500.el8.x86_64", "4.18.0-513.el8.x86_64"] {
        write_file(
            &host.path(&format!("boot/loader/entries/{MACHINE_ID}-{version}.conf")),
            entry(version),
        );
    }
    grubenv(
        host,
        &[
            "kernelopts=root=/dev/mapper/cs-root ro crashkernel=auto resume=/dev/mapper/cs-swap rhgb quiet iommu=pt ",
            &format!("saved_entry={MACHINE_ID}-4.18.0-513.el8.x86_64"),
        ],
    );
    std::fs::create_dir_all(host.path("etc/kernel/install.d")).expect("mkdir");
    write_file(&host.path("etc/default/grub"), SITE_GRUB);
}

/// An EL9 boot layout: literal `options` lines (one with iommu=pt already, a rescue
/// entry), /etc/kernel/cmdline present.
fn el9_layout(host: &HostRoot) {
    let options = "root=/dev/mapper/cs-root ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/cs-swap rd.lvm.lv=cs/root rhgb quiet";
    let entry = |version: &str, title: &str, extra: &str| {
        format!(
            "title {title}\nversion {version}\nlinux /vmlinuz-{version}\ninitrd /initramfs-{version}.img $tuned_initrd\n\
             options {options}{extra}\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class kernel\n"
        )
    };
    write_file(
        &host.path(&format!(
            "boot/loader/entries/{MACHINE_ID}-5.14.0-427.el9.x86_64.conf"
        )),
        entry(
            "5.14.0-427.el9.x86_64",
            "CentOS Stream (5.14.0-427.el9.x86_64) 9",
            " iommu=pt",
        ),
    );
    write_file(
        &host.path(&format!(
            "boot/loader/entries/{MACHINE_ID}-5.14.0-503.el9.x86_64.conf"
        )),
        entry(
            "5.14.0-503.el9.x86_64",
            "CentOS Stream (5.14.0-503.el9.x86_64) 9",
            "",
        ),
    );
    write_file(
        &host.path(&format!("boot/loader/entries/{MACHINE_ID}-0-rescue.conf")),
        entry("0-rescue-0123", "CentOS Stream (0-rescue) 9", ""),
    );
    grubenv(
        host,
        &[&format!("saved_entry={MACHINE_ID}-5.14.0-503.el9.x86_64")],
    );
    write_file(&host.path("etc/kernel/cmdline"), format!("{options}\n"));
    write_file(&host.path("etc/default/grub"), SITE_GRUB);
}

/// The root's files as a snapshot, less the test's own stand-ins and log.
fn host_files(host: &HostRoot) -> Vec<(String, u32, Vec<u8>)> {
    snapshot(host.root())
        .into_iter()
        .filter(|(p, ..)| !p.starts_with("standins") && p != "commands.log")
        .collect()
}

fn file_text(host: &HostRoot, rel: &str) -> String {
    std::fs::read_to_string(host.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn el8_install_then_uninstall_with_the_real_grubby_gives_every_byte_back() {
    let host = install_root();
    el8_layout(&host);
    let Some(path) = real_grubby_path(&host, "el8") else {
        return;
    };
    let before = host_files(&host);
    let run = |args: &[&str]| host.run_with(&path, args);
    let out = run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Only what was missing went in, and GRUB_CMDLINE_LINUX kept its form.
    assert_eq!(
        file_text(&host, "etc/default/grub"),
        "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto  rhgb quiet iommu=pt intel_iommu=on rd.driver.pre=vfio-pci\"  # site default"
    );
    let log = file_text(&host, "commands.log");
    assert!(
        log.contains("grubby --update-kernel=ALL --args=intel_iommu=on rd.driver.pre=vfio-pci --no-etc-grub-update\n"),
        "{log}"
    );
    let env = file_text(&host, "boot/grub2/grubenv");
    assert!(
        env.contains("kernelopts=root=/dev/mapper/cs-root ro crashkernel=auto resume=/dev/mapper/cs-swap rhgb quiet iommu=pt intel_iommu=on rd.driver.pre=vfio-pci\n"),
        "{env}"
    );
    assert_eq!(env.len(), 1024);
    assert!(
        host.path("etc/kernel/cmdline").exists(),
        "EL8's grubby creates it"
    );

    let again = run(&["install"]);
    assert_eq!(
        stdout(&again),
        "this host is set up already: nothing to change\n",
        "{}",
        stderr(&again)
    );

    let out = run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        host_files(&host),
        before,
        "every file byte for byte, /etc/kernel/cmdline gone"
    );
}

#[test]
fn el9_install_then_uninstall_with_the_real_grubby_gives_every_byte_back() {
    bls_round_trip("el9");
}

#[test]
fn el10_install_then_uninstall_with_the_real_grubby_gives_every_byte_back() {
    bls_round_trip("el10");
}

/// EL9 and EL10 keep literal `options` lines in each BLS entry and /etc/kernel/cmdline.
fn bls_round_trip(variant: &str) {
    let host = install_root();
    el9_layout(&host);
    let Some(path) = real_grubby_path(&host, variant) else {
        return;
    };
    let before = host_files(&host);
    let run = |args: &[&str]| host.run_with(&path, args);
    let out = run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in ["5.14.0-427.el9.x86_64", "5.14.0-503.el9.x86_64", "0-rescue"] {
        let text = file_text(
            &host,
            &format!("boot/loader/entries/{MACHINE_ID}-{entry}.conf"),
        );
        let options = text
            .lines()
            .find_map(|l| l.strip_prefix("options "))
            .expect("options");
        let words: Vec<&str> = options.split_whitespace().collect();
        for arg in ["intel_iommu=on", "iommu=pt", "rd.driver.pre=vfio-pci"] {
            assert_eq!(
                words.iter().filter(|w| **w == arg).count(),
                1,
                "{arg} once in {entry}: {options}"
            );
        }
    }
    assert!(file_text(&host, "etc/kernel/cmdline")
        .ends_with(" intel_iommu=on iommu=pt rd.driver.pre=vfio-pci\n"));

    let out = run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        host_files(&host),
        before,
        "every entry keeps the iommu=pt it had; every file byte for byte"
    );
}

#[test]
fn uninstall_keeps_changes_made_since_and_takes_out_only_what_install_added() {
    let host = install_root();
    el9_layout(&host);
    let Some(path) = real_grubby_path(&host, "el9") else {
        return;
    };
    let run = |args: &[&str]| host.run_with(&path, args);
    let entry_503 = format!("boot/loader/entries/{MACHINE_ID}-5.14.0-503.el9.x86_64.conf");
    let entry_427 = format!("boot/loader/entries/{MACHINE_ID}-5.14.0-427.el9.x86_64.conf");
    let original_427 = file_text(&host, &entry_427);
    let out = run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Since install: the operator adds an argument to one entry and a line to grub's
    // defaults and to the modprobe file; a new kernel arrives with our arguments.
    let edited = file_text(&host, &entry_503).replace("rhgb quiet", "rhgb quiet mitigations=off");
    write_file(&host.path(&entry_503), &edited);
    write_file(
        &host.path("etc/default/grub"),
        format!(
            "{}\nGRUB_DISABLE_SUBMENU=true\n",
            file_text(&host, "etc/default/grub")
        ),
    );
    write_file(
        &host.path("etc/modprobe.d/gpu-passthrough.conf"),
        format!(
            "{}options kvm ignore_msrs=1\n",
            file_text(&host, "etc/modprobe.d/gpu-passthrough.conf")
        ),
    );
    let new_kernel = format!("boot/loader/entries/{MACHINE_ID}-5.14.0-570.el9.x86_64.conf");
    write_file(
        &host.path(&new_kernel),
        file_text(&host, &entry_503)
            .replace("503", "570")
            .replace(" mitigations=off", ""),
    );

    let out = run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains(&format!("/{entry_503} was changed since install: took out only what install added, kept the rest")),
        "{said}"
    );
    assert_eq!(
        file_text(&host, &entry_503)
            .lines()
            .find(|l| l.starts_with("options "))
            .expect("options"),
        "options root=/dev/mapper/cs-root ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/cs-swap rd.lvm.lv=cs/root rhgb quiet mitigations=off"
    );
    assert_eq!(
        file_text(&host, &entry_427),
        original_427,
        "unchanged: byte for byte"
    );
    assert_eq!(
        file_text(&host, "etc/default/grub"),
        format!("{SITE_GRUB}\nGRUB_DISABLE_SUBMENU=true\n"),
        "the operator's line stays, the site's form too"
    );
    assert_eq!(
        file_text(&host, "etc/modprobe.d/gpu-passthrough.conf"),
        "options kvm ignore_msrs=1\n",
        "only the operator's line is left"
    );
    assert_eq!(
        file_text(&host, &new_kernel)
            .lines()
            .find(|l| l.starts_with("options "))
            .expect("options"),
        "options root=/dev/mapper/cs-root ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/cs-swap rd.lvm.lv=cs/root rhgb quiet",
        "a kernel installed since loses the arguments it inherited"
    );
}

#[test]
fn a_failed_undo_step_is_named_and_keeps_its_record_and_backups() {
    let host = install_root();
    let before = snapshot(host.root());
    let out = host.run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Something now stands where install's file was: removing it fails.
    let modules = host.path("etc/modules-load.d/gpu-passthrough.conf");
    let ours = content(&modules);
    std::fs::remove_file(&modules).expect("rm");
    std::fs::create_dir(&modules).expect("mkdir");
    write_file(&modules.join("keep"), "in the way");
    let out = host.run(&["uninstall"]);
    assert_exit(
        &out,
        1,
        "undo step failed: /etc/modules-load.d/gpu-passthrough.conf",
    );
    assert_exit(&out, 1, "uninstall is incomplete: 1 step(s) failed");
    // Everything else was undone; the record keeps only the failed step.
    assert!(!host
        .path("etc/libvirt/hooks/qemu.d/gpu-passthrough")
        .exists());
    assert!(!host::is_wrapper(&host.path("usr/libexec/qemu-kvm")));
    let state: Value =
        serde_json::from_str(&file_text(&host, "var/lib/gpu-passthrough/state.json"))
            .expect("state JSON");
    let paths: Vec<&str> = state["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, vec!["/etc/modules-load.d/gpu-passthrough.conf"]);
    // Fixed, a second uninstall finishes the job.
    std::fs::remove_dir_all(&modules).expect("rm");
    write_file(&modules, &ours);
    let out = host.run(&["uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        snapshot(host.root()) == before,
        "the host is as before install"
    );
}

// Issue 10, section 4: a label-safe diversion, and labels in `check`.

#[test]
fn divert_gives_the_wrapper_the_qemu_exec_t_label_before_it_takes_the_name() {
    let host = qemu_root();
    let qemu = host.path("usr/libexec/qemu-kvm");
    let orig = host.path("usr/libexec/qemu-kvm.orig");
    integration_tests::set_label(&qemu, "system_u:object_r:qemu_exec_t:s0");
    integration_tests::set_label(&host.path("usr/libexec"), "system_u:object_r:bin_t:s0");
    // restorecon fails (as when the scriptlet is killed before it): the labels must
    // already be right.
    let path = stand_ins(&host, Some("restorecon"));
    let out = host
        .cli(&["divert"])
        .env("PATH", &path)
        .env("GPU_PASSTHROUGH_RUN_UNDER_ROOT", "1")
        .output()
        .expect("run");
    assert_exit(&out, 1, "restorecon");
    assert!(host::is_wrapper(&qemu));
    assert_eq!(
        integration_tests::label_of(&qemu).as_deref(),
        Some("system_u:object_r:qemu_exec_t:s0"),
        "the wrapper at qemu-kvm"
    );
    assert_eq!(
        integration_tests::label_of(&orig).as_deref(),
        Some("system_u:object_r:qemu_exec_t:s0"),
        "the real qemu at .orig"
    );
    // On a diverted host divert repairs the labels: it runs restorecon.
    std::fs::remove_file(host.path("commands.log")).expect("rm log");
    let path = stand_ins(&host, None);
    let out = host
        .cli(&["divert"])
        .env("PATH", &path)
        .env("GPU_PASSTHROUGH_RUN_UNDER_ROOT", "1")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        file_text(&host, "commands.log"),
        format!("restorecon -F {} {}\n", qemu.display(), orig.display())
    );
}

#[test]
fn a_stale_temp_file_of_a_killed_run_does_not_block_the_next_and_is_cleaned() {
    let host = qemu_root();
    let libexec = host.path("usr/libexec");
    write_file(
        &libexec.join(".qemu-kvm.gpu-passthrough-4242"),
        "half a wrapper",
    );
    std::fs::create_dir_all(libexec.join(".qemu-kvm.gpu-passthrough-tmp")).expect("mkdir");
    write_file(&libexec.join(".qemu-kvm.orig.gpu-passthrough-tmp"), "stale");
    let out = host.run(&["divert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(host::is_wrapper(&libexec.join("qemu-kvm")));
    let mut left: Vec<String> = std::fs::read_dir(&libexec)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["gpu-passthrough", "qemu-kvm", "qemu-kvm.orig"]);
}

#[test]
fn check_reads_the_labels_and_the_module_when_selinux_is_on() {
    let host = qemu_root();
    assert!(host.run(&["divert"]).status.success());
    let qemu = host.path("usr/libexec/qemu-kvm");
    let orig = host.path("usr/libexec/qemu-kvm.orig");
    let lines = |host: &HostRoot| -> Vec<String> {
        stdout(&host.run(&["check"]))
            .lines()
            .filter(|l| l.contains(" selinux"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        lines(&host),
        vec![format!(
            "PASS selinux: SELinux is off ({} is absent): no labels to check",
            host.path("sys/fs/selinux/enforce").display()
        )]
    );
    write_file(&host.path("sys/fs/selinux/enforce"), "1");
    write_file(&host.path("sys/fs/selinux/booleans/virt_use_usb"), "1 1");
    integration_tests::set_label(&qemu, "system_u:object_r:bin_t:s0");
    integration_tests::set_label(&orig, "system_u:object_r:qemu_exec_t:s0");
    let fix = "Fix: run `gpu-passthrough divert` (it runs restorecon), or `restorecon -v /usr/libexec/qemu-kvm /usr/libexec/qemu-kvm.orig`";
    assert_eq!(
        lines(&host),
        vec![
            format!("FAIL selinux-label: {} is labelled bin_t, not qemu_exec_t: libvirt cannot start qemu through it (svirt_t enters only qemu_exec_t files), so every VM start fails. {fix}", qemu.display()),
            format!("PASS selinux-label: {} is qemu_exec_t", orig.display()),
            format!("WARN selinux-module: the gpu-passthrough module is not loaded ({} is absent): the usage ledger has no type of its own, and EL10's virtqemud cannot append to it. Fix: semodule -X 200 -i /usr/share/gpu-passthrough/gpu-passthrough.cil && restorecon -R /var/lib/gpu-passthrough (the package's %post does this)", host.path("var/lib/selinux/targeted/active/modules/200/gpu-passthrough").display()),
            "PASS selinux-boolean: virt_use_usb is on".to_owned(),
        ]
    );
    integration_tests::set_label(&qemu, "system_u:object_r:qemu_exec_t:s0");
    std::fs::create_dir_all(
        host.path("var/lib/selinux/targeted/active/modules/200/gpu-passthrough"),
    )
    .expect("mkdir");
    write_file(&host.path("sys/fs/selinux/booleans/virt_use_usb"), "0 0");
    let state = host.path("var/lib/gpu-passthrough");
    integration_tests::set_label(&state, "system_u:object_r:var_lib_t:s0");
    assert!(lines(&host).contains(&format!(
        "FAIL selinux-label: {} is labelled var_lib_t, not gpu_passthrough_var_lib_t: the hook cannot append to the usage ledger where the daemon is confined (EL10's virtqemud). Fix: restorecon -R {}",
        state.display(),
        state.display()
    )));
    integration_tests::set_label(&state, "system_u:object_r:gpu_passthrough_var_lib_t:s0");
    assert_eq!(
        lines(&host),
        vec![
            format!("PASS selinux-label: {} is qemu_exec_t", qemu.display()),
            format!("PASS selinux-label: {} is qemu_exec_t", orig.display()),
            "PASS selinux-module: the gpu-passthrough module is loaded (targeted, priority 200)".to_owned(),
            format!("PASS selinux-label: {} is gpu_passthrough_var_lib_t", state.display()),
            "WARN selinux-boolean: virt_use_usb is off: the wrapper cannot read sysfs to tell GPU VMs from others. Fix: setsebool -P virt_use_usb on".to_owned(),
        ]
    );
}

// Issue 12: usage and metrics.

/// One ledger line.
#[allow(clippy::too_many_arguments)]
fn ledger_line(
    ts: &str,
    event: &str,
    domain: &str,
    project: (&str, &str),
    user: &str,
    flavor: &str,
    gpus: &[(&str, &str)],
    checks: Option<&[&str]>,
) -> String {
    let mut v = serde_json::json!({
        "ts": ts, "event": event, "host": "gpu-node-1", "domain": domain,
        "domain_uuid": format!("uuid-{domain}"), "instance_id": format!("uuid-{domain}"),
        "instance_name": format!("{domain}-name"), "project_id": project.0,
        "project_name": project.1, "user_id": format!("{user}-id"), "user_name": user,
        "flavor_name": flavor,
        "gpus": gpus.iter().map(|(a, d)| serde_json::json!({
            "address": a, "vendor_id": "10de", "device_id": d,
            "model": if *d == "1b02" { "TITAN Xp" } else { "Tesla T4" }
        })).collect::<Vec<_>>(),
    });
    if let Some(c) = checks {
        v["checks"] = serde_json::json!(c);
    }
    v.to_string()
}

/// Two projects, three GPUs, known times: alice (climate) holds two Titans 01:00-03:00
/// on Nov 1; bob (genome) a T4 from Oct 31 23:00 to Nov 1 02:00 and again from 10:00
/// (still running); one refusal of genome for memory and booking; a stray stop.
fn scenario() -> String {
    let titans = [("0000:18:00.0", "1b02"), ("0000:86:00.0", "1b02")];
    let t4 = [("0000:3b:00.0", "1eb8")];
    let climate = ("p-climate", "climate");
    let genome = ("p-genome", "genome");
    [
        ledger_line(
            "2026-10-31T23:00:00Z",
            "start",
            "vm-b",
            genome,
            "bob",
            "g1.t4",
            &t4,
            None,
        ),
        ledger_line(
            "2026-11-01T00:30:00Z",
            "stop",
            "vm-x",
            genome,
            "bob",
            "g1.t4",
            &t4,
            None,
        ),
        ledger_line(
            "2026-11-01T01:00:00Z",
            "start",
            "vm-a",
            climate,
            "alice",
            "g2.titan",
            &titans,
            None,
        ),
        ledger_line(
            "2026-11-01T02:00:00Z",
            "stop",
            "vm-b",
            genome,
            "bob",
            "g1.t4",
            &t4,
            None,
        ),
        ledger_line(
            "2026-11-01T03:00:00Z",
            "stop",
            "vm-a",
            climate,
            "alice",
            "g2.titan",
            &titans,
            None,
        ),
        ledger_line(
            "2026-11-01T09:00:00Z",
            "refused",
            "vm-c",
            genome,
            "bob",
            "g1.t4",
            &t4,
            Some(&["memory", "booking"]),
        ),
        ledger_line(
            "2026-11-01T10:00:00Z",
            "start",
            "vm-b",
            genome,
            "bob",
            "g1.t4",
            &t4,
            None,
        ),
    ]
    .join("\n")
        + "\n"
}

#[test]
fn usage_reports_gpu_hours_and_refusals_per_key_over_a_window() {
    let host = bare_host();
    let ledger = host.path("ledger");
    write_file(&ledger.join("2026-10.jsonl"), scenario());
    let ledger_arg = ledger.to_string_lossy().into_owned();
    let window = ["--since", "2026-11-01", "--until", "2026-11-01T12:00:00Z"];
    let run = |extra: &[&str]| {
        let mut args = vec!["usage", "--ledger", ledger_arg.as_str()];
        args.extend(window);
        args.extend(extra);
        host.run(&args)
    };
    let out = run(&["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!([
            {"project_id": "p-climate", "project_name": "climate", "gpu_hours": 4.0,
             "refusals": 0, "refusals_by_check": {}},
            {"project_id": "p-genome", "project_name": "genome", "gpu_hours": 4.0,
             "refusals": 1, "refusals_by_check": {"booking": 1, "memory": 1}},
        ]),
        "climate: 2 GPUs x 2 h; genome: 2 h clipped at midnight + 2 h up to --until"
    );
    let out = run(&["--json", "--by", "model", "--by", "user"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!([
            {"vendor_id": "10de", "device_id": "1b02", "model": "TITAN Xp", "user_id": "alice-id",
             "user_name": "alice", "gpu_hours": 4.0, "refusals": 0, "refusals_by_check": {}},
            {"vendor_id": "10de", "device_id": "1eb8", "model": "Tesla T4", "user_id": "bob-id",
             "user_name": "bob", "gpu_hours": 4.0, "refusals": 1,
             "refusals_by_check": {"booking": 1, "memory": 1}},
        ])
    );
    let out = run(&["--csv", "--by", "gpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "address,model,gpu_hours,refusals,refusals_by_check\n\
         0000:18:00.0,TITAN Xp,2,0,\n\
         0000:3b:00.0,Tesla T4,4,1,booking=1;memory=1\n\
         0000:86:00.0,TITAN Xp,2,0,\n"
    );
    // A key usage does not know: a usage error listing the keys it knows.
    assert_exit(
        &run(&["--by", "tenant"]),
        2,
        "[possible values: project, user, flavor, model, instance, gpu]",
    );
    let table = stdout(&run(&["--by", "flavor"]));
    assert_eq!(
        table,
        "GPU-hours from 2026-11-01T00:00:00Z to 2026-11-01T12:00:00Z\n\
         FLAVOR_NAME  GPU_HOURS  REFUSALS\n\
         g1.t4        4.00       1 (booking 1, memory 1)\n\
         g2.titan     4.00       0\n"
    );

    // Bad input: a torn line is a warning; a bad time a usage error; an empty window.
    std::fs::write(ledger.join("2026-11.jsonl"), "{\"ts\": \"2026-11-0").expect("write");
    let out = run(&["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2026-11.jsonl:1: not a ledger record"),
        "{}",
        stderr(&out)
    );
    assert_exit(
        &host.run(&["usage", "--since", "last tuesday"]),
        2,
        "is not a time",
    );
    assert_exit(
        &host.run(&[
            "usage",
            "--ledger",
            &ledger_arg,
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-01",
        ]),
        1,
        "must come after --since",
    );
}

#[test]
fn metrics_writes_the_textfile_closes_lost_intervals_and_passes_promtool() {
    let host = gpu_zoo();
    // The Titan is held by a running Nova VM; the T4 idles in D3hot with a degraded
    // link and AER errors; the RTX sleeps in D3cold (its link must not be read).
    let nova = "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>worker \"1\"</nova:name><nova:flavor name='g2.titan'/><nova:owner><nova:user uuid='u1'>alice</nova:user><nova:project uuid='p1'>climate</nova:project></nova:owner></nova:instance></metadata><uuid>uuid-held</uuid>";
    host.running_with("instance-held", &["0000:18:00.0", "0000:18:00.1"], nova);
    let t4 = host.sysfs().device_dir("0000:3b:00.0");
    for (file, value) in [
        ("power_state", "D3hot\n"),
        ("current_link_speed", "2.5 GT/s PCIe\n"),
        ("max_link_speed", "8.0 GT/s PCIe\n"),
        ("current_link_width", "8\n"),
        ("max_link_width", "16\n"),
        ("aer_dev_correctable", "RxErr 3\nTOTAL_ERR_COR 3\n"),
        ("aer_dev_nonfatal", "TOTAL_ERR_NONFATAL 0\n"),
        ("aer_dev_fatal", "TOTAL_ERR_FATAL 1\n"),
    ] {
        write_file(&t4.join(file), value);
    }
    let rtx = host.sysfs().device_dir("0000:5e:00.0");
    write_file(&rtx.join("power_state"), "D3cold\n");
    write_file(&rtx.join("current_link_speed"), "8.0 GT/s PCIe\n");
    // The ledger: vm-gone started and never stopped (the host crashed); the last
    // heartbeat before the crash was at 02:00. instance-held is still running.
    let usage = host.path("var/lib/gpu-passthrough/usage");
    let climate = ("p1", "climate");
    write_file(
        &usage.join("2026-11.jsonl"),
        [
            ledger_line(
                "2026-11-01T01:00:00Z",
                "start",
                "vm-gone",
                climate,
                "alice",
                "g1.t4",
                &[("0000:3b:00.0", "1eb8")],
                None,
            ),
            ledger_line(
                "2026-11-01T01:30:00Z",
                "start",
                "held",
                climate,
                "alice",
                "g2.titan",
                &[("0000:18:00.0", "1b02")],
                None,
            ),
            ledger_line(
                "2026-11-01T01:40:00Z",
                "refused",
                "vm-c",
                climate,
                "alice",
                "g1.t4",
                &[("0000:3b:00.0", "1eb8")],
                Some(&["iommu-group"]),
            ),
        ]
        .join("\n")
            + "\n",
    );
    // The status file's <uuid>uuid-held</uuid> makes "held" the same domain as
    // instance-held: it runs, its interval stays open.
    write_file(&usage.join("heartbeat"), "2026-11-01T02:00:00Z\n");
    let textfiles = host.path("textfiles");
    let out = host.run(&["metrics", "--textfile-dir", &textfiles.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("domain 'vm-gone' is gone without a stop (a host crash?): closed its interval at 2026-11-01T02:00:00Z"),
        "{}",
        stderr(&out)
    );
    let lines: Vec<Value> = std::fs::read_to_string(usage.join("2026-11.jsonl"))
        .expect("ledger")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let mut lost: Value = serde_json::from_str(&ledger_line(
        "2026-11-01T02:00:00Z",
        "stop",
        "vm-gone",
        climate,
        "alice",
        "g1.t4",
        &[("0000:3b:00.0", "1eb8")],
        None,
    ))
    .expect("JSON");
    lost["lost"] = Value::Bool(true);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines[3], lost,
        "only the gone domain is closed, at the heartbeat"
    );
    let heartbeat = std::fs::read_to_string(usage.join("heartbeat")).expect("heartbeat");
    assert!(
        heartbeat.starts_with("20") && heartbeat.trim() != "2026-11-01T02:00:00Z",
        "{heartbeat}"
    );

    let prom = std::fs::read_to_string(textfiles.join("gpu_passthrough.prom")).expect("prom file");
    let series: Vec<&str> = prom.lines().filter(|l| !l.starts_with('#')).collect();
    // Two values move with the clock: the Titan's open interval counts up to now, and
    // the run's own timestamp. Both are checked for what they must be, then masked.
    let now = jiff::Timestamp::now().as_second();
    let value = |line: &str| -> i64 {
        line.rsplit_once(' ')
            .and_then(|(_, v)| v.parse().ok())
            .expect("an integer value")
    };
    let titan_seconds = "gpu_passthrough_gpu_seconds_total{project_id=\"p1\",project_name=\"climate\",model=\"TITAN Xp\"}";
    let last_run = "gpu_passthrough_last_run_timestamp_seconds";
    let masked: Vec<String> = series
        .iter()
        .map(|line| {
            let (name, _) = line.rsplit_once(' ').expect("name value");
            if name == titan_seconds {
                // Held since 2026-11-01T01:30:00Z (the ledger's start above).
                let since = 1_793_496_600;
                assert!((value(line) - (now - since)).abs() <= 60, "{line}");
                format!("{name} <up to now>")
            } else if name == last_run {
                assert!((value(line) - now).abs() <= 60, "{line}");
                format!("{name} <now>")
            } else {
                (*line).to_owned()
            }
        })
        .collect();
    let mut expected = vec![
        "gpu_passthrough_gpu_info{address=\"0000:18:00.0\",vendor_id=\"10de\",device_id=\"1b02\",model=\"NVIDIA Corporation GP102 [TITAN Xp]\",driver=\"nouveau\",iommu_group=\"30\",numa_node=\"\"} 1".to_owned(),
        "gpu_passthrough_gpu_info{address=\"0000:3b:00.0\",vendor_id=\"10de\",device_id=\"1eb8\",model=\"NVIDIA Corporation TU104GL [Tesla T4]\",driver=\"vfio-pci\",iommu_group=\"40\",numa_node=\"\"} 1".to_owned(),
        "gpu_passthrough_gpu_info{address=\"0000:5e:00.0\",vendor_id=\"10de\",device_id=\"1e87\",model=\"NVIDIA Corporation TU104 [GeForce RTX 2080 Rev. A]\",driver=\"vfio-pci\",iommu_group=\"50\",numa_node=\"\"} 1".to_owned(),
        "gpu_passthrough_gpu_in_use{address=\"0000:18:00.0\",model=\"NVIDIA Corporation GP102 [TITAN Xp]\",domain=\"instance-held\",instance_id=\"uuid-held\",instance_name=\"worker \\\"1\\\"\",project_id=\"p1\",project_name=\"climate\",user_id=\"u1\",user_name=\"alice\",flavor_name=\"g2.titan\"} 1".to_owned(),
        "gpu_passthrough_gpu_in_use{address=\"0000:3b:00.0\",model=\"NVIDIA Corporation TU104GL [Tesla T4]\",domain=\"\",instance_id=\"\",instance_name=\"\",project_id=\"\",project_name=\"\",user_id=\"\",user_name=\"\",flavor_name=\"\"} 0".to_owned(),
        "gpu_passthrough_gpu_in_use{address=\"0000:5e:00.0\",model=\"NVIDIA Corporation TU104 [GeForce RTX 2080 Rev. A]\",domain=\"\",instance_id=\"\",instance_name=\"\",project_id=\"\",project_name=\"\",user_id=\"\",user_name=\"\",flavor_name=\"\"} 0".to_owned(),
        format!("{titan_seconds} <up to now>"),
        "gpu_passthrough_gpu_seconds_total{project_id=\"p1\",project_name=\"climate\",model=\"Tesla T4\"} 3600".to_owned(),
    ];
    // Every check's refusals, iommu-group's one among them, in name order.
    let mut checks = host_model::checks::CHECK_NAMES.to_vec();
    checks.sort_unstable();
    for check in checks {
        let n = u32::from(check == "iommu-group");
        expected.push(format!(
            "gpu_passthrough_refusals_total{{check=\"{check}\"}} {n}"
        ));
    }
    // The T4 in D3hot, the RTX in D3cold, the Titan's power_state unreadable.
    for (address, state) in [
        ("0000:18:00.0", "unknown"),
        ("0000:3b:00.0", "D3hot"),
        ("0000:5e:00.0", "D3cold"),
    ] {
        for s in ["D0", "D1", "D2", "D3hot", "D3cold", "unknown"] {
            let n = u32::from(s == state);
            expected.push(format!(
                "gpu_passthrough_power_state{{address=\"{address}\",state=\"{s}\"}} {n}"
            ));
        }
    }
    // Link and AER of the T4 only: no link is read in D3cold, the Titan has no files.
    for line in [
        "gpu_passthrough_pcie_link_speed_gts{address=\"0000:3b:00.0\"} 2.5",
        "gpu_passthrough_pcie_link_speed_gts_max{address=\"0000:3b:00.0\"} 8",
        "gpu_passthrough_pcie_link_width{address=\"0000:3b:00.0\"} 8",
        "gpu_passthrough_pcie_link_width_max{address=\"0000:3b:00.0\"} 16",
        "gpu_passthrough_aer_errors_total{address=\"0000:3b:00.0\",severity=\"correctable\"} 3",
        "gpu_passthrough_aer_errors_total{address=\"0000:3b:00.0\",severity=\"nonfatal\"} 0",
        "gpu_passthrough_aer_errors_total{address=\"0000:3b:00.0\",severity=\"fatal\"} 1",
    ] {
        expected.push(line.to_owned());
    }
    expected.push(format!("{last_run} <now>"));
    assert_eq!(masked, expected, "whole:\n{prom}");

    match which("promtool") {
        Some(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("promtool");
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(prom.as_bytes())
                .expect("feed promtool");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}{}",
                stdout(&out),
                stderr(&out)
            );
        }
        None => {
            integration_tests::missing_prerequisite("promtool (apt-get install prometheus)");
        }
    }

    // A second run closes nothing more.
    let out = host.run(&["metrics", "--textfile-dir", &textfiles.to_string_lossy()]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
}

// Issue 14, section 2: which daemon runs the qemu driver, from the unit states.

#[test]
fn install_and_check_find_the_daemon_and_restart_it_only_when_it_may() {
    // virtqemud, socket-activated, no VM running: install restarts it if it runs.
    let host = install_root();
    write_file(
        &host.path("systemctl.states"),
        "virtqemud.socket is-active\nvirtqemud.socket is-enabled\n",
    );
    let run = |host: &HostRoot, args: &[&str]| {
        host.cli(args)
            .env("PATH", stand_ins(host, None))
            .env("GPU_PASSTHROUGH_RUN_UNDER_ROOT", "1")
            .output()
            .expect("run")
    };
    let out = run(&host, &["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("virtqemud: ran systemctl try-restart virtqemud.service (virtqemud.socket is active), so that it reads the hook\n"),
        "{}",
        stdout(&out)
    );
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert!(
        log.ends_with("systemctl try-restart virtqemud.service\n"),
        "{log}"
    );
    let check = stdout(&run(&host, &["check"]));
    assert!(
        check.contains("PASS libvirt-daemon: virtqemud runs the qemu driver (virtqemud.socket is active): it runs the hook, and reads hooks when it starts\n"),
        "{check}"
    );

    // libvirtd, enabled but not active, one VM running: install says what to restart.
    let host = install_root();
    write_file(
        &host.path("systemctl.states"),
        "libvirtd.service is-enabled\n",
    );
    host.running_with("instance-00000001", &["0000:3b:00.0"], "");
    let out = run(&host, &["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("restart libvirtd (systemctl restart libvirtd.service; libvirtd.service is enabled) so that it reads the hook: 1 VM(s) run, so install did not (they keep running; --restart-libvirt does it)"),
        "{}",
        stdout(&out)
    );
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert!(!log.contains("restart"), "{log}");
    // Asked, it restarts.
    run(&host, &["uninstall"]);
    let out = run(&host, &["install", "--restart-libvirt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(host.path("commands.log")).expect("log");
    assert!(
        log.ends_with("systemctl restart libvirtd.service\n"),
        "{log}"
    );

    // Neither: check cannot tell, and says so.
    write_file(&host.path("systemctl.states"), "");
    let check = stdout(&run(&host, &["check"]));
    assert!(
        check.contains("WARN libvirt-daemon: cannot tell which daemon runs the qemu driver: neither virtqemud nor libvirtd is active or enabled"),
        "{check}"
    );
}

// Issue 14, section 1: dracut lists only modules every installed kernel has.

fn kernel(host: &HostRoot, kver: &str, dep: &str, builtin: &str) {
    write_file(&host.path(&format!("lib/modules/{kver}/modules.dep")), dep);
    write_file(
        &host.path(&format!("lib/modules/{kver}/modules.builtin")),
        builtin,
    );
}

const EL8_DEP: &str = "kernel/drivers/vfio/vfio.ko.xz: kernel/drivers/vfio/vfio_virqfd.ko.xz\n\
    kernel/drivers/vfio/vfio_virqfd.ko.xz:\n\
    kernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n\
    kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/vfio.ko.xz kernel/drivers/vfio/vfio_virqfd.ko.xz\n";
const EL10_DEP: &str =
    "kernel/drivers/vfio/vfio.ko.xz: kernel/drivers/iommu/iommufd/iommufd.ko.xz\n\
    kernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n\
    kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz\n\
    kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n";

fn dracut_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("+add_drivers+="))
        .unwrap_or_else(|| panic!("no add_drivers in:\n{text}"))
}

#[test]
fn dracut_and_modules_load_list_only_what_every_kernel_has() {
    let host = install_root();
    kernel(
        &host,
        "4.18.0-553.el8.x86_64",
        EL8_DEP,
        "kernel/drivers/pci/pci-stub.ko\n",
    );
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        dracut_line(&text),
        "+add_drivers+=\" vfio vfio_virqfd vfio_iommu_type1 vfio_pci \"",
        "EL8's 4.18 has vfio_virqfd as a module of its own"
    );
    assert!(
        text.contains("+vfio\n+vfio_virqfd\n+vfio_iommu_type1\n+vfio_pci\n"),
        "{text}"
    );

    // An EL10 kernel beside it: vfio_virqfd is part of vfio from 6.2 on.
    kernel(&host, "6.12.0-55.el10.x86_64", EL10_DEP, "");
    let out = host.run(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        dracut_line(&text),
        "+add_drivers+=\" vfio vfio_iommu_type1 vfio_pci \""
    );
    assert!(
        text.contains("note: vfio_virqfd left out of dracut and modules-load.d: kernel 6.12.0-55.el10.x86_64 has no such module (it is part of vfio from kernel 6.2 on)\n"),
        "{text}"
    );

    // A module built into the kernel counts as there.
    kernel(
        &host,
        "6.12.0-55.el10.x86_64",
        &EL10_DEP.replace(
            "kernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n",
            "",
        ),
        "kernel/drivers/vfio/vfio_iommu_type1.ko\n",
    );
    let text = stdout(&host.run(&["install", "--dry-run"]));
    assert_eq!(
        dracut_line(&text),
        "+add_drivers+=\" vfio vfio_iommu_type1 vfio_pci \""
    );
}

// Issue 13, quotas: nova-config --quota.

/// Nova's provider config rules (schema 1.0 of nova/compute/provider_config.py, and
/// the checks after it), written down again for the test: every way `config` breaks
/// them.
fn provider_config_errors(config: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let upper = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    let version = config["meta"]["schema_version"].as_str().unwrap_or("");
    let minor_ok = version.strip_prefix("1.").is_some_and(|m| {
        m == "0" || (!m.starts_with('0') && !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
    });
    if !minor_ok {
        errors.push(format!("meta.schema_version {version:?} is not 1.N"));
    } else if version != "1.0" {
        errors.push(format!("schema {version}: Nova supports 1.0 only"));
    }
    let Some(providers) = config["providers"].as_array() else {
        errors.push("providers is not a list".into());
        return errors;
    };
    for (i, p) in providers.iter().enumerate() {
        let id = p["identification"].as_object();
        match id {
            Some(id) if id.len() == 1 => {
                let (k, v) = id.iter().next().expect("one");
                let s = v.as_str().unwrap_or("");
                let uuid_like = s.len() == 36
                    && s.bytes().enumerate().all(|(j, b)| {
                        if [8, 13, 18, 23].contains(&j) {
                            b == b'-'
                        } else {
                            b.is_ascii_hexdigit()
                        }
                    });
                match k.as_str() {
                    "uuid" if uuid_like || s == "$COMPUTE_NODE" => {}
                    "name" if (1..=200).contains(&s.len()) => {}
                    _ => errors.push(format!("providers[{i}].identification {k}={v}")),
                }
            }
            _ => errors.push(format!(
                "providers[{i}].identification needs exactly one of uuid, name"
            )),
        }
        let additional = p["inventories"]["additional"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let traits = p["traits"]["additional"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if additional.is_empty() && traits.is_empty() {
            errors.push(format!(
                "providers[{i}] has no additional inventories or traits: Nova ignores it"
            ));
        }
        for inv in &additional {
            let Some(map) = inv.as_object() else {
                errors.push(format!("providers[{i}]: an inventory is not a map"));
                continue;
            };
            for (rc, fields) in map {
                if !upper(rc) || !rc.starts_with("CUSTOM_") {
                    errors.push(format!(
                        "resource class {rc}: not a custom class (CUSTOM_[A-Z0-9_]+)"
                    ));
                }
                let Some(fields) = fields.as_object() else {
                    errors.push(format!("{rc}: not a map"));
                    continue;
                };
                if !fields.contains_key("total") {
                    errors.push(format!("{rc}: total is required"));
                }
                for (k, v) in fields {
                    match k.as_str() {
                        "total" | "reserved" | "min_unit" | "max_unit" | "step_size"
                            if v.is_i64() || v.is_u64() => {}
                        "allocation_ratio" if v.is_number() => {}
                        _ => errors.push(format!("{rc}.{k} = {v}: not allowed")),
                    }
                }
            }
        }
        for t in &traits {
            let t = t.as_str().unwrap_or("");
            if !upper(t) || !t.starts_with("CUSTOM_") {
                errors.push(format!("trait {t}: not a custom trait"));
            }
        }
    }
    errors
}

#[test]
fn nova_config_quota_before_and_after_2026_2() {
    let host = gpu_zoo();
    host.sysfs().add(&f(
        "0000:af:00.0",
        0x10de,
        0x1eb8,
        0x030200,
        Some("vfio-pci"),
        60,
    ));

    // Before 2026.2: a provider config Nova accepts, flavor resources, unified limits.
    let v = host.json(&["nova-config", "--release", "2025.1", "--quota", "--json"]);
    let q = &v["quota"];
    assert_eq!(q["method"], "provider-config");
    let classes: Vec<(String, u64)> = q["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| {
            (
                c["resource_class"].as_str().expect("rc").to_owned(),
                c["count"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(
        classes,
        vec![
            ("CUSTOM_GPU_10DE_1B02".to_owned(), 1),
            ("CUSTOM_GPU_10DE_1E87".to_owned(), 1),
            ("CUSTOM_GPU_10DE_1EB8".to_owned(), 2),
        ]
    );
    let config = &q["provider_config"];
    assert_eq!(
        provider_config_errors(config),
        Vec::<String>::new(),
        "{config}"
    );
    assert_eq!(
        config["providers"][0]["inventories"]["additional"][2]["CUSTOM_GPU_10DE_1EB8"],
        serde_json::json!({"total": 2, "reserved": 0, "min_unit": 1, "max_unit": 2, "step_size": 1, "allocation_ratio": 1.0})
    );
    assert_eq!(
        q["nova_conf_compute"]["compute"]["provider_config_location"],
        "/etc/nova/provider_config/"
    );
    assert_eq!(
        q["nova_conf_controller"]["quota"]["driver"],
        "nova.quota.UnifiedLimitsDriver"
    );
    let commands: Vec<&str> = q["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .map(|c| c.as_str().expect("str"))
        .collect();
    assert_eq!(
        commands,
        [
            "openstack flavor set gpu.10de_1b02 --property resources:CUSTOM_GPU_10DE_1B02=1",
            "openstack flavor set gpu.10de_1e87 --property resources:CUSTOM_GPU_10DE_1E87=1",
            "openstack flavor set gpu.10de_1eb8 --property resources:CUSTOM_GPU_10DE_1EB8=1",
            "openstack registered limit create --service nova --default-limit 0 class:CUSTOM_GPU_10DE_1B02",
            "openstack limit create --service nova --project PROJECT --resource-limit 1 class:CUSTOM_GPU_10DE_1B02",
            "openstack registered limit create --service nova --default-limit 0 class:CUSTOM_GPU_10DE_1E87",
            "openstack limit create --service nova --project PROJECT --resource-limit 1 class:CUSTOM_GPU_10DE_1E87",
            "openstack registered limit create --service nova --default-limit 0 class:CUSTOM_GPU_10DE_1EB8",
            "openstack limit create --service nova --project PROJECT --resource-limit 2 class:CUSTOM_GPU_10DE_1EB8",
        ]
    );

    // The YAML the text output shows is the same document (read by PyYAML, as Nova does).
    let text = stdout(&host.run(&["nova-config", "--release", "2025.1", "--quota"]));
    let yaml: String = text
        .split("# --- begin provider config\n")
        .nth(1)
        .and_then(|rest| rest.split("# --- end provider config\n").next())
        .unwrap_or_else(|| panic!("no provider config in:\n{text}"))
        .to_owned();
    assert!(text.contains("# Why they must stay in step: "), "{text}");
    let mut py = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML");
    use std::io::Write as _;
    py.stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("feed");
    let out = py.wait_with_output().expect("python3");
    assert!(out.status.success(), "PyYAML could not read:\n{yaml}");
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(&parsed, config, "YAML:\n{yaml}");

    // The rules can fail: a class Nova would reject, a missing total.
    let mut broken = config.clone();
    broken["providers"][0]["inventories"]["additional"][0] =
        serde_json::json!({"gpu": {"reserved": 0}});
    assert_eq!(
        provider_config_errors(&broken),
        vec![
            "resource class gpu: not a custom class (CUSTOM_[A-Z0-9_]+)".to_owned(),
            "gpu: total is required".to_owned()
        ]
    );

    // From 2026.2: PCI in Placement, no provider config, no resources: property.
    let v = host.json(&["nova-config", "--release", "2026.2", "--quota", "--json"]);
    let q = &v["quota"];
    assert_eq!(q["method"], "pci-in-placement");
    assert_eq!(q["provider_config"], Value::Null);
    assert_eq!(q["nova_conf_compute"]["pci"]["report_in_placement"], "True");
    assert_eq!(
        q["nova_conf_controller"]["filter_scheduler"]["pci_in_placement"],
        "True"
    );
    assert!(
        !q["commands"].to_string().contains("resources:"),
        "{}",
        q["commands"]
    );
    let text = stdout(&host.run(&["nova-config", "--release", "hibiscus", "--quota"]));
    assert!(
        text.contains("device_spec = {\"vendor_id\": \"10de\", \"product_id\": \"1eb8\", \"resource_class\": \"CUSTOM_GPU_10DE_1EB8\"}\n"),
        "{text}"
    );
}

// Issue 13: bookings list, violations, import, and the metrics gauge.

#[test]
fn bookings_list_violations_import_and_the_unbooked_gauge() {
    let host = gpu_zoo();
    let nova = |name: &str, uuid: &str| {
        format!(
            "<uuid>{uuid}</uuid><metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>{name}</nova:name><nova:owner><nova:user uuid='u1'>alice</nova:user><nova:project uuid='p1'>climate</nova:project></nova:owner></nova:instance></metadata>"
        )
    };
    host.running_with(
        "instance-a",
        &["0000:18:00.0", "0000:18:00.1"],
        &nova("vm-a", "ua"),
    );
    host.running_with("instance-b", &["0000:3b:00.0"], &nova("vm-b", "ub"));
    let climate = ("p1", "climate");
    write_file(
        &host.path("var/lib/gpu-passthrough/usage/2026-11.jsonl"),
        [
            ledger_line(
                "2026-11-01T08:00:00Z",
                "start",
                "a",
                climate,
                "alice",
                "g1",
                &[("0000:18:00.0", "1b02")],
                None,
            )
            .replace("uuid-a", "ua"),
            ledger_line(
                "2026-11-02T08:00:00Z",
                "start",
                "b",
                climate,
                "alice",
                "g1",
                &[("0000:3b:00.0", "1eb8")],
                None,
            )
            .replace("uuid-b", "ub"),
        ]
        .join("\n")
            + "\n",
    );
    let bookings = serde_json::json!({"bookings": [
        {"id": "b1", "project": "climate", "gpu": "0000:18:00.0", "start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"},
        {"id": "b2", "project": "p1", "model": "10de:1eb8", "start": "2026-11-01T00:00:00Z", "end": "2026-11-20T00:00:00Z"},
        {"id": "b3", "project": "genome", "model": "10de:1eb8", "count": 2, "start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00Z"},
        {"id": "b4", "project": "climate", "host": "other-node", "model": "10de:1eb8", "start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"},
    ]});
    write_file(&host.path("export.json"), bookings.to_string());
    write_file(
        &host.path("etc/gpu-passthrough/config.toml"),
        "[bookings]\nmode = \"enforce\"\n",
    );
    let run = |args: &[&str]| {
        host.cli(args)
            .env("GPU_PASSTHROUGH_HOSTNAME", "gpu-node-1.example.org")
            .output()
            .expect("run")
    };
    let export = host.path("export.json").to_string_lossy().into_owned();
    let out = run(&["bookings", "import", &export]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(host.path("etc/gpu-passthrough/bookings.json")).expect("written"),
        bookings.to_string()
    );

    let out = run(&["--json", "bookings", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<(&str, &str)> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().expect("id"),
                b["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![("b1", "now"), ("b3", "upcoming")],
        "b2 ended, b4 is another host's"
    );

    // vm-b's booking (b2) ended while it runs: a violation.
    let out = run(&["--json", "bookings", "violations"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!([{
            "domain": "instance-b", "instance_id": "ub", "instance_name": "vm-b",
            "project_id": "p1", "project_name": "climate", "user_name": "alice",
            "gpus": ["0000:3b:00.0"], "since": "2026-11-02T08:00:00Z",
            "booking_ended": "2026-11-20T00:00:00Z"
        }])
    );
    assert!(
        stdout(&run(&["bookings", "violations"])).contains("instance-b (vm-b, project climate, user alice): GPU 0000:3b:00.0 without a booking since 2026-11-02T08:00:00Z; its booking ended 2026-11-20T00:00:00Z"),
    );

    // The gauge for alerting.
    let textfiles = host.path("textfiles");
    let out = run(&["metrics", "--textfile-dir", &textfiles.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let prom = std::fs::read_to_string(textfiles.join("gpu_passthrough.prom")).expect("prom");
    let unbooked: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("gpu_passthrough_unbooked_gpu_in_use{"))
        .collect();
    assert_eq!(
        unbooked,
        vec![
            "gpu_passthrough_unbooked_gpu_in_use{address=\"0000:18:00.0\",instance_id=\"ua\",project_id=\"p1\"} 0",
            "gpu_passthrough_unbooked_gpu_in_use{address=\"0000:3b:00.0\",instance_id=\"ub\",project_id=\"p1\"} 1",
        ]
    );

    // Bad input: a booking that cannot be.
    write_file(&host.path("bad.json"), "{\"bookings\": [{\"id\": \"x\", \"project\": \"p\", \"gpu\": \"18:00.0\", \"start\": \"2026-11-02T00:00:00Z\", \"end\": \"2026-11-01T00:00:00Z\"}]}");
    let bad = host.path("bad.json").to_string_lossy().into_owned();
    assert_exit(
        &run(&["bookings", "import", &bad]),
        1,
        "booking 1 (\"x\"): end is not after start",
    );
    assert_eq!(
        std::fs::read_to_string(host.path("etc/gpu-passthrough/bookings.json")).expect("kept"),
        bookings.to_string(),
        "a bad export changes nothing"
    );
}

/// An iCalendar export as Google, Thunderbird and Outlook write one: CRLF, folded lines,
/// VTIMEZONE blocks, X-WR-TIMEZONE.
const CALENDAR: &str = "BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Example Research Cloud//GPU bookings//EN\r
X-WR-TIMEZONE:Europe/Berlin\r
BEGIN:VTIMEZONE\r
TZID:W. Europe Standard Time\r
X-LIC-LOCATION:Europe/Berlin\r
BEGIN:STANDARD\r
DTSTART:16011028T030000\r
TZOFFSETFROM:+0200\r
TZOFFSETTO:+0100\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r
END:STANDARD\r
END:VTIMEZONE\r
BEGIN:VEVENT\r
UID:a@cal\r
SUMMARY:Titan for the climate runs\r
DTSTART;TZID=Europe/Berlin:20261201T080000\r
DTEND;TZID=Europe/Berlin:20261201T180000\r
X-GPU-PROJ\r
 ECT:climate-lab\r
X-GPU-USER:alice\r
X-GPU-HOST:gpu-node-1\r
X-GPU-ADDRESS:0000:18:00.0\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:w@cal\r
DTSTART;TZID=America/New_York:20261026T090000\r
DTEND;TZID=America/New_York:20261026T170000\r
RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=4\r
EXDATE;TZID=America/New_York:20261109T090000\r
X-GPU-PROJECT:genome\r
X-GPU-MODEL:10de:1eb8\r
X-GPU-COUNT:2\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:w@cal\r
RECURRENCE-ID;TZID=America/New_York:20261116T090000\r
DTSTART;TZID=America/New_York:20261117T100000\r
DTEND;TZID=America/New_York:20261117T120000\r
X-GPU-COUNT:1\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:d@cal\r
DTSTART:20261201T120000Z\r
DURATION:PT4H30M\r
X-GPU-PROJECT:p-7f3a\r
X-GPU-MODEL:10de:1b02\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:h@cal\r
DTSTART;VALUE=DATE:20261224\r
DTEND;VALUE=DATE:20261226\r
X-GPU-PROJECT:climate-lab\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:c@cal\r
STATUS:CANCELLED\r
DTSTART:20261205T000000Z\r
DTEND:20261206T000000Z\r
X-GPU-PROJECT:climate-lab\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:daily@cal\r
DTSTART:20200101T000000Z\r
DTEND:20200101T010000Z\r
RRULE:FREQ=DAILY\r
X-GPU-PROJECT:nightly\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:win@cal\r
DTSTART;TZID=W. Europe Standard Time:20270328T023000\r
DTEND;TZID=W. Europe Standard Time:20270328T053000\r
X-GPU-PROJECT:climate-lab\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:moz@cal\r
DTSTART;TZID=/mozilla.org/20050126_1/America/New_York:20261101T013000\r
DTEND;TZID=/mozilla.org/20050126_1/America/New_York:20261101T033000\r
X-GPU-PROJECT:genome\r
END:VEVENT\r
END:VCALENDAR\r
";

/// `bookings import FILE.ics`: time zones (DST on both sides of the Atlantic, a local time
/// in a gap and one that occurs twice, a Windows TZID, a vendor-prefixed one, all-day
/// dates in the calendar's zone), recurrence (RRULE, EXDATE, a moved occurrence, a series
/// without end cut at a year ahead), cancelled events. The expected times are worked out
/// by hand from the zones' rules.
#[test]
fn bookings_import_reads_an_icalendar_export_with_zones_and_recurrence() {
    let host = gpu_zoo();
    let run = |args: &[&str]| {
        host.cli(args)
            .env("GPU_PASSTHROUGH_NOW", "2026-10-20T00:00:00Z")
            .output()
            .expect("run")
    };
    write_file(&host.path("export.ics"), CALENDAR);
    let export = host.path("export.ics").to_string_lossy().into_owned();
    let file = host.path("etc/gpu-passthrough/bookings.json");

    // --dry-run prints the file and writes nothing.
    let out = run(&["bookings", "import", "--dry-run", &export]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists(), "a dry run wrote the file");
    let dry: Value = serde_json::from_slice(&out.stdout).expect("JSON");

    let out = run(&["bookings", "import", &export]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("JSON");
    assert_eq!(written, dry);
    let all = written["bookings"].as_array().expect("bookings").clone();
    let b = |id: &str, project: &str, start: &str, end: &str, more: Value| {
        let mut v = serde_json::json!({"id": id, "project": project, "count": 1, "start": start, "end": end});
        for (k, x) in more.as_object().expect("object") {
            v[k] = x.clone();
        }
        v
    };
    let none = serde_json::json!({});
    let t4 = serde_json::json!({"model": "10de:1eb8", "count": 2});
    let others: Vec<Value> = all
        .iter()
        .filter(|v| !v["id"].as_str().expect("id").starts_with("daily@cal/"))
        .cloned()
        .collect();
    assert_eq!(
        others,
        vec![
            // 09:00 EDT (UTC-4), then 09:00 EST (UTC-5) after 1 November; 9 November excluded.
            b(
                "w@cal/2026-10-26T13:00:00Z",
                "genome",
                "2026-10-26T13:00:00Z",
                "2026-10-26T21:00:00Z",
                t4.clone()
            ),
            // 01:30 occurs twice on 1 November in New York: the first (EDT); 03:30 is EST.
            b(
                "moz@cal",
                "genome",
                "2026-11-01T05:30:00Z",
                "2026-11-01T08:30:00Z",
                none.clone()
            ),
            b(
                "w@cal/2026-11-02T14:00:00Z",
                "genome",
                "2026-11-02T14:00:00Z",
                "2026-11-02T22:00:00Z",
                t4.clone()
            ),
            // The 16 November occurrence moved to the 17th, 10:00-12:00 EST, one GPU.
            b(
                "w@cal/2026-11-16T14:00:00Z",
                "genome",
                "2026-11-17T15:00:00Z",
                "2026-11-17T17:00:00Z",
                serde_json::json!({"model": "10de:1eb8"})
            ),
            // 08:00-18:00 CET (UTC+1).
            b(
                "a@cal",
                "climate-lab",
                "2026-12-01T07:00:00Z",
                "2026-12-01T17:00:00Z",
                serde_json::json!({"user": "alice", "host": "gpu-node-1", "gpu": "0000:18:00.0"})
            ),
            b(
                "d@cal",
                "p-7f3a",
                "2026-12-01T12:00:00Z",
                "2026-12-01T16:30:00Z",
                serde_json::json!({"model": "10de:1b02"})
            ),
            // All day 24 and 25 December in X-WR-TIMEZONE (Europe/Berlin).
            b(
                "h@cal",
                "climate-lab",
                "2026-12-23T23:00:00Z",
                "2026-12-25T23:00:00Z",
                none.clone()
            ),
            // 02:30 on 28 March 2027 is in Berlin's gap: read with the offset before it
            // (UTC+1); 05:30 is CEST (UTC+2). The Windows TZID via X-LIC-LOCATION.
            b(
                "win@cal",
                "climate-lab",
                "2027-03-28T01:30:00Z",
                "2027-03-28T03:30:00Z",
                none.clone()
            ),
        ]
    );
    // The daily series since 2020: from the last occurrence that ended within 31 days
    // before now to the last that starts within a year after it.
    let daily: Vec<String> = all
        .iter()
        .filter_map(|v| v["id"].as_str().filter(|i| i.starts_with("daily@cal/")))
        .map(str::to_owned)
        .collect();
    let mut expected = Vec::new();
    let mut day = jiff::civil::date(2026, 9, 19);
    while day <= jiff::civil::date(2027, 10, 19) {
        expected.push(format!("daily@cal/{day}T00:00:00Z"));
        day = day.tomorrow().expect("a next day");
    }
    assert_eq!(daily, expected);
    assert_eq!(daily.len(), 396);
    assert_eq!(
        stdout(&out),
        format!("wrote {} (404 booking(s) from {export})\n", file.display())
    );

    // What cannot be mapped is an error naming the event and the fix; the file stays.
    let before = std::fs::read(&file).expect("read");
    for (calendar, message) in [
        (
            CALENDAR.replace("X-GPU-PROJECT:p-7f3a\r\n", ""),
            "event \"d@cal\": it has no X-GPU-PROJECT: say whose booking it is",
        ),
        (
            CALENDAR.replace(
                "TZID=America/New_York:20261026T090000",
                "TZID=Mars/Olympus:20261026T090000",
            ),
            "TZID \"Mars/Olympus\" is not an IANA time zone name",
        ),
        (
            CALENDAR.replace("X-WR-TIMEZONE:Europe/Berlin\r\n", ""),
            "\"20261224\" is a floating time (no Z, no TZID) and the calendar has no X-WR-TIMEZONE",
        ),
        (
            CALENDAR.replace("DURATION:PT4H30M", "DURATION:4 hours"),
            "DURATION: \"4 hours\" is not a duration",
        ),
        (
            CALENDAR.replace("X-GPU-MODEL:10de:1b02", "X-GPU-MODEL:titan"),
            "model \"titan\" is not VENDOR:DEVICE in hex",
        ),
        (
            "this is not a calendar\n".to_owned(),
            "not an iCalendar (RFC 5545) file",
        ),
    ] {
        write_file(&host.path("bad.ics"), &calendar);
        let bad = host.path("bad.ics").to_string_lossy().into_owned();
        let out = run(&["bookings", "import", &bad]);
        assert_exit(&out, 1, message);
        assert!(
            stderr(&out).contains("nothing was written"),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read(&file).expect("read"), before, "{message}");
    }
    // A time override that is not a time: named, and nothing written.
    let out = host
        .cli(&["bookings", "import", &export])
        .env("GPU_PASSTHROUGH_NOW", "next tuesday")
        .output()
        .expect("run");
    assert_exit(
        &out,
        1,
        "$GPU_PASSTHROUGH_NOW \"next tuesday\" is not an RFC 3339 time",
    );
    assert_eq!(std::fs::read(&file).expect("read"), before);
}
