//! gpu-passthrough-hook, the built binary, on fake hosts: a sysfs tree shaped like a
//! real one, /proc/meminfo, libvirt's status files and pci.ids in a tempdir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use integration_tests::host::{HostRoot, BOOKINGS, CONFIG, LIBVIRT_RUN, STATE_DIR};
use integration_tests::{assert_exit, bin, stderr, stdout, write_file, FakeSysfs, PciFunction};

const GPU: &str = "0000:18:00.0";
const GPU_AUDIO: &str = "0000:18:00.1";
const GIB: u64 = 1 << 30;

const PCI_IDS: &str = "10de  NVIDIA Corporation\n\t1b02  GP102 [TITAN Xp]\n\t10ef  GP102 HDMI Audio Controller\n\t1eb8  TU104GL [Tesla T4]\n8086  Intel Corporation\n\t1572  Ethernet Controller X710 for 10GbE SFP+\n";

/// A GPU hypervisor for one test: a Titan Xp (VGA + audio, IOMMU group 30) on vfio-pci,
/// 64 GiB of memory, no running domains, an empty config.
fn titan_host() -> HostRoot {
    let host = HostRoot::new();
    host.add(&PciFunction::new(
        GPU,
        0x10de,
        0x1b02,
        0x030000,
        Some("vfio-pci"),
        Some(30),
    ));
    host.add(&PciFunction::new(
        GPU_AUDIO,
        0x10de,
        0x10ef,
        0x040300,
        Some("vfio-pci"),
        Some(30),
    ));
    host.meminfo(64 * GIB);
    std::fs::create_dir_all(host.path(LIBVIRT_RUN)).expect("run dir");
    host.pci_ids(PCI_IDS);
    host.config("");
    host
}

/// The hook's calls on a [`HostRoot`].
trait Hook {
    fn hook(&self, args: &[&str]) -> Command;
    fn ledger(&self) -> Vec<serde_json::Value>;
    fn run(&self, args: &[&str], stdin: &str) -> Output;
    fn prepare(&self, name: &str, xml: &str) -> Output;
}

impl Hook for HostRoot {
    /// The hook as libvirt starts it, pointed at this root.
    fn hook(&self, args: &[&str]) -> Command {
        let mut c = self.command(&bin("gpu-passthrough-hook"));
        c.args(args).env("GPU_PASSTHROUGH_HOSTNAME", "gpu-node-1");
        c
    }

    /// Every ledger record, in file order, with its `ts` checked and taken out.
    fn ledger(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let dir = self.path(&format!("{STATE_DIR}/usage"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
        files.sort();
        for f in files {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            for line in std::fs::read_to_string(&f).expect("read").lines() {
                let mut v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let ts = v["ts"].as_str().expect("ts").to_owned();
                assert!(
                    ts.len() == 20 && ts.ends_with('Z') && name == format!("{}.jsonl", &ts[..7]),
                    "{ts} in {name}"
                );
                v.as_object_mut().expect("object").remove("ts");
                out.push(v);
            }
        }
        out
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .hook(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the hook");
        // The hook may exit without reading stdin: a broken pipe is fine.
        let _ = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes());
        child.wait_with_output().expect("wait for the hook")
    }

    /// libvirt's call at `prepare begin`.
    fn prepare(&self, name: &str, xml: &str) -> Output {
        self.run(&[name, "prepare", "begin", "-"], xml)
    }
}

/// A domain XML: memory in GiB, PCI hostdevs as (address, managed), extra XML inside
/// <domain>.
fn domain(name: &str, memory_gib: u64, hostdevs: &[(&str, bool)], extra: &str) -> String {
    let mut devices = String::new();
    for (address, managed) in hostdevs {
        let (domain, rest) = address.split_once(':').expect("address");
        let (bus, rest) = rest.split_once(':').expect("address");
        let (slot, function) = rest.split_once('.').expect("address");
        devices.push_str(&format!(
            "    <hostdev mode='subsystem' type='pci' managed='{}'>\n      <driver name='vfio'/>\n      \
             <source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source>\n    </hostdev>\n",
            if *managed { "yes" } else { "no" }
        ));
    }
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>00000000-0000-0000-0000-{:0>12.12}</uuid>\n  \
         <memory unit='KiB'>{}</memory>\n{extra}  <devices>\n    <emulator>/usr/libexec/qemu-kvm</emulator>\n{devices}  </devices>\n</domain>\n",
        name.bytes().map(|b| format!("{b:02x}")).collect::<String>(),
        memory_gib * 1024 * 1024
    )
}

fn both_functions() -> Vec<(&'static str, bool)> {
    vec![(GPU, true), (GPU_AUDIO, true)]
}

const NOVA_METADATA: &str = "  <metadata>\n    <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\">\n      \
    <nova:name>gpu-worker-1</nova:name>\n      <nova:owner><nova:user uuid='u'>alice</nova:user>\
    <nova:project uuid='p'>climate-lab</nova:project></nova:owner>\n    </nova:instance>\n  </metadata>\n";

#[track_caller]
fn assert_allowed(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
}

/// Refused: exit 1, one paragraph on stderr naming the domain, containing `needles`.
#[track_caller]
fn assert_refused(out: &Output, domain: &str, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.starts_with(&format!(
            "gpu-passthrough-hook: refusing to start domain '{domain}'"
        )),
        "{err}"
    );
    assert!(!err.contains("\n\n"), "one paragraph: {err}");
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert!(err.contains("Fix: "), "says how to fix it: {err}");
}

#[test]
fn a_complete_gpu_passes_silently() {
    let host = titan_host();
    let out = host.prepare("vm1", &domain("vm1", 16, &both_functions(), ""));
    assert_allowed(&out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn every_other_operation_exits_0_whatever_stdin_holds() {
    let host = titan_host();
    // Broken in every way: missing device, broken config, garbage.
    host.config("[hook\nmode = ");
    let broken = domain("vm1", 1000, &[("0000:99:00.0", false)], "");
    for (op, sub) in [
        ("start", "begin"),
        ("started", "begin"),
        ("stopped", "end"),
        ("release", "end"),
        ("migrate", "begin"),
        ("restore", "begin"),
        ("reconnect", "begin"),
        ("attach", "begin"),
        ("prepare", "end"),
    ] {
        for stdin in [broken.as_str(), "<hostdev garbage", ""] {
            let out = host.run(&["vm1", op, sub, "-"], stdin);
            assert_allowed(&out);
            // At most the ledger's warning (journald's, where there is one).
            let err = stderr(&out);
            let ledger_event = matches!(op, "started" | "release" | "reconnect");
            assert!(
                err.is_empty()
                    || (ledger_event
                        && err.starts_with("gpu-passthrough-hook: ledger: ")
                        && err.lines().count() == 1),
                "{op} {sub}: {err}"
            );
        }
    }
    // Other shapes are not libvirt's (it always passes four): a usage error.
    assert_exit(&host.run(&["vm1"], &broken), 2, "libvirt's four arguments");
    assert_exit(&host.run(&[], &broken), 2, "libvirt's four arguments");
}

#[test]
fn a_domain_without_pci_hostdevs_exits_0_at_once() {
    let host = titan_host();
    host.config("not toml at all [");
    assert_allowed(&host.prepare("plain", &domain("plain", 1000, &[], "")));
    assert_allowed(&host.prepare("garbage", "\x00\x01 not xml"));
    let usb_only = "<domain><name>u</name><memory>1</memory><devices>\
        <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>\
        </devices></domain>";
    host.config("");
    assert_allowed(&host.prepare("u", usb_only));
}

#[test]
fn an_incomplete_iommu_group_is_refused_with_device_names_and_fix() {
    let host = titan_host();
    // The audio function is still on the host's sound driver.
    host.add(&PciFunction::new(
        GPU_AUDIO,
        0x10de,
        0x10ef,
        0x040300,
        Some("snd_hda_intel"),
        Some(30),
    ));
    let out = host.prepare("vm1", &domain("vm1", 16, &[(GPU, true)], NOVA_METADATA));
    assert_refused(
        &out,
        "vm1",
        &[
            "(Nova instance 'gpu-worker-1', project 'climate-lab')",
            "0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp])",
            "IOMMU group 30 is not viable",
            "0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller)",
            "'snd_hda_intel'",
            "pass 0000:18:00.1 through",
        ],
    );
    // Passing both functions through makes the same host fine: libvirt detaches them.
    assert_allowed(&host.prepare("vm1", &domain("vm1", 16, &both_functions(), "")));
}

#[test]
fn bridges_stub_and_driverless_members_keep_a_group_viable() {
    let host = titan_host();
    host.add(&PciFunction::new(
        "0000:17:00.0",
        0x8086,
        0x2030,
        0x060400,
        Some("pcieport"),
        Some(30),
    ));
    host.add(&PciFunction::new(
        "0000:18:00.2",
        0x10de,
        0x1ad6,
        0x0c0330,
        Some("pci-stub"),
        Some(30),
    ));
    host.add(&PciFunction::new(
        "0000:18:00.3",
        0x10de,
        0x1ad7,
        0x0c8000,
        None,
        Some(30),
    ));
    assert_allowed(&host.prepare("vm1", &domain("vm1", 16, &both_functions(), "")));
}

#[test]
fn a_missing_device_is_refused() {
    let host = titan_host();
    let out = host.prepare("vm1", &domain("vm1", 4, &[("0000:99:00.0", true)], ""));
    assert_refused(
        &out,
        "vm1",
        &["0000:99:00.0", "no PCI function at this address"],
    );
}

#[test]
fn unmanaged_devices_must_already_be_on_vfio_pci() {
    let host = titan_host();
    host.add(&PciFunction::new(
        GPU,
        0x10de,
        0x1b02,
        0x030000,
        Some("nouveau"),
        Some(30),
    ));
    let out = host.prepare(
        "vm1",
        &domain("vm1", 4, &[(GPU, false), (GPU_AUDIO, false)], ""),
    );
    assert_refused(
        &out,
        "vm1",
        &[
            "managed='no'",
            "bound to 'nouveau'",
            "`gpu-passthrough install` binds every function",
        ],
    );
    // The audio function is on vfio-pci, so it alone is fine.
    assert!(
        !stderr(&out).contains("0000:18:00.1 (10de:10ef"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_iommu_off_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = titan_host();
    // A host booted without the IOMMU: functions without groups, no iommu_groups.
    let bare = FakeSysfs::new(&dir.path().join("sys"));
    bare.add(&PciFunction::new(
        GPU,
        0x10de,
        0x1b02,
        0x030000,
        Some("nouveau"),
        None,
    ));
    let out = host
        .hook(&["vm1", "prepare", "begin", "-"])
        .env("GPU_PASSTHROUGH_SYSFS", bare.root())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .expect("stdin")
                .write_all(domain("vm1", 4, &[(GPU, true)], "").as_bytes())?;
            c.wait_with_output()
        })
        .expect("run");
    assert_refused(&out, "vm1", &["the IOMMU is off", "intel_iommu=on"]);
}

#[test]
fn a_device_held_by_another_running_domain_is_refused_naming_it() {
    let host = titan_host();
    host.running(
        "instance-00000001",
        &domain("instance-00000001", 8, &both_functions(), NOVA_METADATA),
    );
    let out = host.prepare("vm2", &domain("vm2", 8, &both_functions(), ""));
    assert_refused(
        &out,
        "vm2",
        &["held by the running domain 'instance-00000001' (Nova instance 'gpu-worker-1'"],
    );
    // A running domain without our devices is no obstacle.
    host.running(
        "instance-00000001",
        &domain("instance-00000001", 8, &[], ""),
    );
    assert_allowed(&host.prepare("vm2", &domain("vm2", 8, &both_functions(), "")));
}

#[test]
fn a_group_member_held_by_another_domain_is_refused() {
    let host = titan_host();
    host.running("other", &domain("other", 8, &[(GPU_AUDIO, true)], ""));
    let out = host.prepare("vm2", &domain("vm2", 8, &[(GPU, true)], ""));
    assert_refused(
        &out,
        "vm2",
        &["IOMMU group 30 is shared with 0000:18:00.1", "'other'"],
    );
}

#[test]
fn memory_the_host_cannot_pin_is_refused() {
    let host = titan_host();
    let t4 = "0000:af:00.0";
    host.add(&PciFunction::new(
        t4,
        0x10de,
        0x1eb8,
        0x030200,
        Some("vfio-pci"),
        Some(40),
    ));
    host.running("big", &domain("big", 48, &[(t4, true)], ""));
    // 64 GiB - 4 GiB reserved - 48 GiB pinned = 12 GiB < 16 GiB.
    let out = host.prepare("vm1", &domain("vm1", 16, &both_functions(), ""));
    assert_refused(
        &out,
        "vm1",
        &[
            "cannot pin this VM's 16.0 GiB",
            "48.0 GiB pinned by 1 running VM(s) with host devices (big)",
            "= 12.0 GiB",
        ],
    );
    // 12 GiB fits; so does 16 GiB with a smaller reserve.
    assert_allowed(&host.prepare("vm1", &domain("vm1", 12, &both_functions(), "")));
    host.config("[hook]\nreserved_host_memory_mib = 0\n");
    assert_allowed(&host.prepare("vm1", &domain("vm1", 16, &both_functions(), "")));
}

#[test]
fn a_hard_limit_below_memory_plus_1_gib_is_refused() {
    let host = titan_host();
    let low = "  <memtune><hard_limit unit='KiB'>17301503</hard_limit></memtune>\n";
    let out = host.prepare("vm1", &domain("vm1", 16, &both_functions(), low));
    assert_refused(&out, "vm1", &["hard_limit", "17825792 KiB"]);
    let enough = "  <memtune><hard_limit unit='G'>17</hard_limit></memtune>\n";
    assert_allowed(&host.prepare("vm1", &domain("vm1", 16, &both_functions(), enough)));
}

#[test]
fn huge_pages_must_be_free() {
    let host = titan_host();
    let pool = "kernel/mm/hugepages/hugepages-1048576kB/free_hugepages";
    let node1 = "devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages";
    write_file(&host.sysfs().root().join(pool), "8\n");
    write_file(&host.sysfs().root().join(node1), "16\n");
    let global =
        "  <memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>\n";
    let out = host.prepare("vm1", &domain("vm1", 16, &both_functions(), global));
    assert_refused(
        &out,
        "vm1",
        &["needs 16 free huge pages of 1.0 GiB, the host has 8"],
    );
    let on_node1 =
        "  <memoryBacking><hugepages><page size='1048576' unit='KiB' nodeset='1'/></hugepages></memoryBacking>\n";
    assert_allowed(&host.prepare("vm1", &domain("vm1", 16, &both_functions(), on_node1)));
    let default_size = "  <memoryBacking><hugepages/></memoryBacking>\n";
    let out = host.prepare("vm1", &domain("vm1", 1, &both_functions(), default_size));
    assert_refused(
        &out,
        "vm1",
        &["huge pages of 2 MiB", "no such pool", "hugepagesz=2M"],
    );
}

#[test]
fn a_balloon_or_low_current_memory_is_a_warning_not_a_refusal() {
    let host = titan_host();
    let extra = "  <currentMemory unit='KiB'>8388608</currentMemory>\n";
    let xml = domain("vm1", 16, &both_functions(), extra)
        .replace("</devices>", "  <memballoon model='virtio'/>\n  </devices>");
    let out = host.prepare("vm1", &xml);
    assert_allowed(&out);
    let err = stderr(&out);
    assert!(
        err.contains("WARN balloon: the VM has a virtio memory balloon"),
        "{err}"
    );
    assert!(
        err.contains("<currentMemory> 8.0 GiB is below <memory> 16.0 GiB"),
        "{err}"
    );
}

#[test]
fn warn_mode_starts_anyway_and_off_mode_checks_nothing() {
    let host = titan_host();
    let bad = domain("vm1", 4, &[("0000:99:00.0", true)], "");
    host.config("[hook]\nmode = \"warn\"\n");
    let out = host.prepare("vm1", &bad);
    assert_allowed(&out);
    assert!(
        stderr(&out).contains("starting despite:\n  FAIL device: 0000:99:00.0"),
        "{}",
        stderr(&out)
    );
    host.config("[hook]\nmode = \"off\"\n");
    let out = host.prepare("vm1", &bad);
    assert_allowed(&out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn garbage_xml_with_hostdevs_is_refused_with_its_position_in_enforce_mode() {
    let host = titan_host();
    let garbage = "<domain>\n<name>vm1</name>\n<hostdev mode='subsystem'>\n</domain>\n";
    let out = host.prepare("vm1", garbage);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to start domain 'vm1': its XML does not parse (line 4"),
        "{err}"
    );
    host.config("[hook]\nmode = \"warn\"\n");
    assert_allowed(&host.prepare("vm1", garbage));
}

#[test]
fn a_broken_config_refuses_hostdev_domains_naming_file_line_and_key() {
    let host = titan_host();
    host.config("[hook]\nmode = \"enforce\"\nreserved_host_memory_mib = \"lots\"\n");
    let out = host.prepare("vm1", &domain("vm1", 4, &both_functions(), ""));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml: line 3: hook.reserved_host_memory_mib"),
        "{err}"
    );
}

#[test]
fn an_unreadable_status_file_is_a_warning() {
    let host = titan_host();
    write_file(
        &host.path(&format!("{LIBVIRT_RUN}/odd.xml")),
        "<domstatus><not-a-domain/>",
    );
    let out = host.prepare("vm1", &domain("vm1", 4, &both_functions(), ""));
    assert_allowed(&out);
    assert!(stderr(&out).contains("WARN host-state"), "{}", stderr(&out));
}

#[test]
fn check_xml_prints_a_report() {
    let host = titan_host();
    host.add(&PciFunction::new(
        GPU_AUDIO,
        0x10de,
        0x10ef,
        0x040300,
        Some("snd_hda_intel"),
        Some(30),
    ));
    let file = host.path("vm1.xml");
    write_file(&file, domain("vm1", 16, &[(GPU, true)], NOVA_METADATA));
    let out = host.run(&["--check-xml", file.to_str().expect("utf-8")], "");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "domain 'vm1' (Nova instance 'gpu-worker-1', project 'climate-lab'):\n\
         PASS iommu: the IOMMU is on\n\
         PASS device: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): present\n\
         FAIL iommu-group: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): IOMMU group 30 is not viable: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller) is in the same group and bound to the host driver 'snd_hda_intel'. Fix: pass 0000:18:00.1 through to this VM as well (a <hostdev>; for Nova, an alias for it in the flavor), or, if it is a function of the GPU's card, bind it to vfio-pci (`gpu-passthrough install` does so at boot); if the host needs that device, move the card to a slot with its own IOMMU group\n\
         PASS memory: 16.0 GiB can be pinned: MemTotal 64.0 GiB - reserved 4.0 GiB - 0 MiB pinned by 0 running VM(s) with host devices = 60.0 GiB\n\
         1 FAIL, 0 WARN: the hook would refuse to start it\n"
    );

    // From stdin, on a good domain.
    let out = host.run(
        &["--check-xml", "-"],
        &domain("vm1", 16, &both_functions(), ""),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "domain 'vm1':\n\
         PASS iommu: the IOMMU is on\n\
         PASS device: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): present\n\
         PASS iommu-group: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): IOMMU group 30 is viable (2 members)\n\
         PASS device: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller): present\n\
         PASS iommu-group: 0000:18:00.1 (10de:10ef NVIDIA Corporation GP102 HDMI Audio Controller): IOMMU group 30 is viable (2 members)\n\
         PASS memory: 16.0 GiB can be pinned: MemTotal 64.0 GiB - reserved 4.0 GiB - 0 MiB pinned by 0 running VM(s) with host devices = 60.0 GiB\n\
         0 FAIL, 0 WARN: the hook would let it start\n"
    );
}

#[test]
fn check_xml_errors_and_usage() {
    let host = titan_host();
    let out = host.run(&["--check-xml", "/nonexistent/vm.xml"], "");
    assert_exit(&out, 1, "cannot read /nonexistent/vm.xml");
    let out = host.run(&["--check-xml", "-"], "<domain><name>x</name>");
    assert_exit(&out, 1, "stdin: line 1, column");
    assert_eq!(host.run(&["--check-xml"], "").status.code(), Some(2));
    assert_eq!(host.run(&["--bogus"], "").status.code(), Some(2));
    let help = host.run(&["--help"], "");
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--check-xml FILE|-"));
    assert!(
        stdout(&help).lines().all(|l| l.chars().count() <= 80),
        "80 columns"
    );
}

/// One entry in journald's native protocol: `NAME=value` lines, or `NAME`, a newline,
/// a 64-bit little-endian length and the value (values with newlines).
fn journal_fields(mut rest: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .expect("a field name");
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        let value;
        if rest[end] == b'=' {
            let stop = end
                + rest[end..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("newline");
            value = &rest[end + 1..stop];
            rest = &rest[stop + 1..];
        } else {
            let len: [u8; 8] = rest[end + 1..end + 9].try_into().expect("a length");
            let len = u64::from_le_bytes(len) as usize;
            value = &rest[end + 9..end + 9 + len];
            rest = &rest[end + 10 + len..];
        }
        fields.push((name, String::from_utf8_lossy(value).into_owned()));
    }
    fields
}

/// With journald there, the hook logs to it under its own identifier: warnings there
/// only, a refusal there and on stderr (virsh shows stderr). The test plays journald on
/// its socket, so it runs on its own (`make test` runs the ignored tests one at a time).
#[test]
#[ignore = "binds /run/systemd/journal/socket; `make test` runs it on its own"]
fn messages_go_to_journald_under_the_hooks_identifier() {
    use std::os::unix::net::UnixDatagram;

    /// Removes the socket and the directories made for it, even when an assert fails.
    struct Cleanup(PathBuf, Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            for d in self.1.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    let socket = Path::new("/run/systemd/journal/socket");
    if socket.exists() {
        assert!(!integration_tests::in_ci(), "CI machines have no journald");
        eprintln!(
            "SKIP: a journald listens on {}; not intercepting it",
            socket.display()
        );
        return;
    }
    let dir = socket.parent().expect("parent");
    let created: Vec<PathBuf> = [Path::new("/run/systemd"), dir]
        .iter()
        .filter(|d| !d.exists())
        .map(|d| d.to_path_buf())
        .collect();
    if std::fs::create_dir_all(dir).is_err() {
        integration_tests::missing_prerequisite("cannot create /run/systemd/journal (not root)");
        return;
    }
    let journal = UnixDatagram::bind(socket).expect("bind the journal socket");
    let _cleanup = Cleanup(socket.to_path_buf(), created);
    journal
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let next_entry = || {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = journal.recv(&mut buf).expect("a journal entry within 5 s");
            // tracing-journald first sends an empty datagram to probe the socket.
            if n > 0 {
                return journal_fields(&buf[..n]);
            }
        }
    };
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
    };

    let host = titan_host();
    let bad = domain("vm1", 4, &[("0000:99:00.0", true)], "");
    host.config("[hook]\nmode = \"warn\"\n");
    let out = host.prepare("vm1", &bad);
    let warning = next_entry();
    assert_allowed(&out);
    assert!(
        out.stderr.is_empty(),
        "warnings go to journald only: {}",
        stderr(&out)
    );
    assert_eq!(field(&warning, "SYSLOG_IDENTIFIER"), "gpu-passthrough-hook");
    assert_eq!(field(&warning, "PRIORITY"), "4");
    let message = field(&warning, "MESSAGE");
    assert!(
        message.contains("starting despite:\n  FAIL device: 0000:99:00.0"),
        "{message}"
    );

    host.config("");
    let out = host.prepare("vm1", &bad);
    let refusal = next_entry();
    assert_refused(&out, "vm1", &["0000:99:00.0"]);
    assert_eq!(field(&refusal, "PRIORITY"), "3");
    let message = field(&refusal, "MESSAGE");
    assert!(
        message.starts_with("refusing to start domain 'vm1'"),
        "{message}"
    );
}

// Issue 10, section 3: libvirt's call first, and the XML read as libvirt reads it.

#[test]
fn four_arguments_are_libvirts_call_whatever_the_domain_is_named() {
    let host = titan_host();
    let broken = domain("-x", 1000, &[("0000:99:00.0", false)], "");
    // A domain named like a flag: reconnect and release must never fail.
    for name in ["-x", "--help", "--check-xml", "-V"] {
        for (op, sub, extra) in [
            ("reconnect", "begin", "-"),
            ("release", "end", "shutdown"),
            ("started", "begin", "-"),
        ] {
            let out = host.run(&[name, op, sub, extra], &broken);
            assert_allowed(&out);
            assert!(out.stdout.is_empty(), "{name} {op}: {}", stdout(&out));
            assert!(out.stderr.is_empty(), "{name} {op}: {}", stderr(&out));
        }
    }
    // And at prepare the checks run on it like on any other domain.
    let out = host.prepare("--help", &domain("--help", 4, &both_functions(), ""));
    assert_allowed(&out);
    assert!(out.stdout.is_empty(), "no help text: {}", stdout(&out));
    let out = host.prepare("-x", &broken);
    assert_refused(&out, "-x", &["0000:99:00.0", "no PCI function"]);
    // Other shapes are the hook's own flags.
    let out = host.run(&["--help"], "");
    assert_allowed(&out);
    assert!(stdout(&out).starts_with("gpu-passthrough-hook: libvirt qemu hook"));
    assert_exit(&host.run(&["--frobnicate"], ""), 2, "four arguments");
}

/// Nova-style NUMA guest: one cell of 16 GiB, pinned to host node `host_node`,
/// backed by 1 GiB pages named by guest cell 0.
fn numa_guest(host_node: u32) -> String {
    domain(
        "vm1",
        16,
        &both_functions(),
        &format!(
            "  <memoryBacking><hugepages><page size='1048576' unit='KiB' nodeset='0'/></hugepages></memoryBacking>\n  \
             <numatune><memory mode='strict' nodeset='{host_node}'/><memnode cellid='0' mode='strict' nodeset='{host_node}'/></numatune>\n  \
             <cpu mode='host-model'><topology sockets='1' cores='4' threads='1'/><numa><cell id='0' cpus='0-3' memory='16777216' unit='KiB'/></numa></cpu>\n"
        ),
    )
}

#[test]
fn huge_pages_come_from_the_host_node_numatune_names_not_the_guest_cell() {
    let host = titan_host();
    let pool = "hugepages/hugepages-1048576kB/free_hugepages";
    write_file(
        &host.sysfs().root().join(format!("kernel/mm/{pool}")),
        "16\n",
    );
    write_file(
        &host
            .sysfs()
            .root()
            .join(format!("devices/system/node/node0/{pool}")),
        "0\n",
    );
    write_file(
        &host
            .sysfs()
            .root()
            .join(format!("devices/system/node/node1/{pool}")),
        "16\n",
    );
    // Guest cell 0 on host node 1, which has the pages: it starts.
    assert_allowed(&host.prepare("vm1", &numa_guest(1)));
    // Guest cell 0 on host node 0, which has none: it cannot.
    let out = host.prepare("vm1", &numa_guest(0));
    assert_refused(
        &out,
        "vm1",
        &["needs 16 free huge pages of 1.0 GiB on host NUMA node(s) 0 (guest cell(s) 0), the host has 0"],
    );
}

#[test]
fn a_hostdev_without_managed_is_unmanaged_as_in_libvirt() {
    let host = titan_host();
    host.add(&PciFunction::new(
        GPU,
        0x10de,
        0x1b02,
        0x030000,
        Some("nouveau"),
        Some(30),
    ));
    let xml = domain("vm1", 4, &both_functions(), "").replace(" managed='yes'", "");
    let out = host.prepare("vm1", &xml);
    assert_refused(
        &out,
        "vm1",
        &["FAIL driver: 0000:18:00.0", "managed='no'", "'nouveau'"],
    );
}

#[test]
fn another_namespaces_instance_element_is_not_novas_and_refuses_nothing() {
    let host = titan_host();
    let metadata = NOVA_METADATA.replace(
        "  </metadata>",
        "    <x:instance xmlns:x=\"http://example.org/scheduler/1\"><x:name>s</x:name></x:instance>\n  </metadata>",
    );
    let xml = domain("vm1", 4, &both_functions(), &metadata);
    assert_allowed(&host.prepare("vm1", &xml));
    // The same XML as a running domain's status file: its GPU is still seen as held.
    host.running("vm1", &xml);
    let out = host.prepare("vm2", &domain("vm2", 4, &both_functions(), ""));
    assert_refused(
        &out,
        "vm2",
        &["held by the running domain 'vm1' (Nova instance 'gpu-worker-1', project 'climate-lab')"],
    );
}

#[test]
fn memory_units_are_case_insensitive_as_libvirt_reads_them() {
    let host = titan_host();
    let xml = domain("vm1", 4, &both_functions(), "").replace(
        "<memory unit='KiB'>4194304</memory>",
        "<memory unit='gib'>4</memory>",
    );
    assert!(xml.contains("unit='gib'"), "{xml}");
    assert_allowed(&host.prepare("vm1", &xml));
    let xml = xml.replace(
        "<memory unit='gib'>4</memory>",
        "<memory unit='gib'>100</memory>",
    );
    assert_refused(
        &host.prepare("vm1", &xml),
        "vm1",
        &["cannot pin this VM's 100.0 GiB"],
    );
}

#[test]
fn an_interface_hostdev_pins_memory_like_a_hostdev() {
    let host = titan_host();
    let vf = "0000:3b:02.1";
    host.add(&PciFunction::new(
        vf,
        0x8086,
        0x154c,
        0x020000,
        Some("vfio-pci"),
        Some(60),
    ));
    let sriov = domain("sriov-vm", 48, &[], "").replace(
        "</devices>",
        "  <interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/>\
         <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></interface>\n  </devices>",
    );
    host.running("sriov-vm", &sriov);
    let out = host.prepare("vm1", &domain("vm1", 16, &both_functions(), ""));
    assert_refused(
        &out,
        "vm1",
        &["48.0 GiB pinned by 1 running VM(s) with host devices (sriov-vm)"],
    );
    // And an interface hostdev alone makes a domain subject to the checks.
    let own = domain("vm3", 100, &[], "").replace(
        "</devices>",
        "  <interface type='hostdev' managed='yes'>\
         <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></interface>\n  </devices>",
    );
    assert_refused(
        &host.prepare("vm3", &own),
        "vm3",
        &["cannot pin this VM's 100.0 GiB"],
    );
}

#[test]
fn a_config_key_from_a_newer_version_is_a_warning_not_a_refusal() {
    let host = titan_host();
    host.config("[hook]\nmode = \"enforce\"\nfuture_knob = true\n[bookings]\nmode = \"enforce\"\n");
    let out = host.prepare("vm1", &domain("vm1", 4, &both_functions(), ""));
    assert_allowed(&out);
    let err = stderr(&out);
    assert!(
        err.contains("line 3: hook.future_knob: unknown key, ignored"),
        "{err}"
    );
    // A bad value of a known key is still an error.
    host.config(
        "[hook]\nmode = \"enforce\"\nreserved_host_memory_mib = \"lots\"\nfuture_knob = 1\n",
    );
    let out = host.prepare("vm1", &domain("vm1", 4, &both_functions(), ""));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

// Issue 12: the usage ledger.

#[test]
fn the_ledger_records_start_reconnect_stop_and_refusals_of_gpu_domains() {
    let host = titan_host();
    let name = "instance-0000002a";
    let xml = domain(name, 16, &both_functions(), NOVA_METADATA);
    for (op, sub, extra) in [
        ("prepare", "begin", "-"),
        ("started", "begin", "-"),
        ("reconnect", "begin", "-"),
        ("release", "end", "shutdown"),
        ("stopped", "end", "-"),
    ] {
        let out = host.run(&[name, op, sub, extra], &xml);
        assert_allowed(&out);
        assert!(out.stderr.is_empty(), "{op}: {}", stderr(&out));
    }
    // A domain without host devices leaves no record.
    assert_allowed(&host.run(
        &["plain", "started", "begin", "-"],
        &domain("plain", 1, &[], ""),
    ));
    // A refusal: more memory than the host can pin, and a hard limit below it.
    let too_big = domain(
        name,
        160,
        &both_functions(),
        &format!("{NOVA_METADATA}  <memtune><hard_limit unit='G'>17</hard_limit></memtune>\n"),
    );
    let out = host.prepare(name, &too_big);
    assert_eq!(out.status.code(), Some(1));
    let uuid = "00000000-0000-0000-0000-696e7374616e";
    let record = |event: &str| {
        serde_json::json!({
            "event": event, "host": "gpu-node-1", "domain": name, "domain_uuid": uuid,
            "instance_id": uuid, "instance_name": "gpu-worker-1", "project_id": "p",
            "project_name": "climate-lab", "user_id": "u", "user_name": "alice",
            "flavor_name": null,
            "gpus": [{"address": "0000:18:00.0", "vendor_id": "10de", "device_id": "1b02",
                      "model": "NVIDIA Corporation GP102 [TITAN Xp]"}],
        })
    };
    let mut refused = record("refused");
    refused["checks"] = serde_json::json!(["memory", "hard-limit"]);
    assert_eq!(
        host.ledger(),
        vec![record("start"), record("running"), record("stop"), refused]
    );
}

#[test]
fn a_ledger_that_cannot_be_written_never_fails_an_operation() {
    let host = titan_host();
    write_file(
        &host.path(STATE_DIR),
        "a file where the state directory should be",
    );
    let xml = domain("vm1", 4, &both_functions(), "");
    for (op, sub) in [
        ("started", "begin"),
        ("reconnect", "begin"),
        ("release", "end"),
    ] {
        let out = host.run(&["vm1", op, sub, "-"], &xml);
        assert_allowed(&out);
        assert!(
            stderr(&out).contains("ledger: cannot create"),
            "{op}: {}",
            stderr(&out)
        );
    }
    // Garbage XML at reconnect: a warning, exit 0.
    let out = host.run(&["vm1", "reconnect", "begin", "-"], "<domain><hostdev");
    assert_allowed(&out);
    assert!(stderr(&out).contains("does not parse"), "{}", stderr(&out));
}

// Issue 13: bookings enforced at prepare begin, called exactly as libvirt calls the hook.

fn booking(id: &str, project: &str, target: &str, start: &str, end: &str) -> String {
    format!(
        "{{\"id\": \"{id}\", \"project\": \"{project}\", {target}, \"start\": \"{start}\", \"end\": \"{end}\"}}"
    )
}

fn bookings_file(host: &HostRoot, entries: &[String]) {
    write_file(
        &host.path(BOOKINGS),
        format!("{{\"bookings\": [\n{}\n]}}\n", entries.join(",\n")),
    );
}

#[test]
fn a_gpu_start_without_a_booking_is_refused_in_enforce_mode_and_logged_in_warn_mode() {
    let host = titan_host();
    let bookings = host.path(BOOKINGS);
    host.config(&format!(
        "[bookings]\nmode = \"enforce\"\nfile = {:?}\n",
        bookings.display().to_string()
    ));
    let xml = domain("instance-0000002a", 4, &both_functions(), NOVA_METADATA);
    let name = "instance-0000002a";

    // The project's booking of this very GPU covers now: it starts.
    bookings_file(
        &host,
        &[booking(
            "b1",
            "climate-lab",
            "\"gpu\": \"0000:18:00.0\"",
            "2000-01-01T00:00:00Z",
            "2100-01-01T00:00:00Z",
        )],
    );
    assert_allowed(&host.prepare(name, &xml));

    // Another project's booking, and this project's next one in 2099.
    bookings_file(
        &host,
        &[
            booking(
                "b2",
                "genome",
                "\"gpu\": \"0000:18:00.0\"",
                "2000-01-01T00:00:00Z",
                "2100-01-01T00:00:00Z",
            ),
            booking(
                "b3",
                "p",
                "\"model\": \"10de:1b02\"",
                "2099-01-01T00:00:00Z",
                "2099-02-01T00:00:00Z",
            ),
        ],
    );
    let out = host.prepare(name, &xml);
    assert_refused(
        &out,
        name,
        &[
            "FAIL booking: 0000:18:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): project 'climate-lab' has no booking that covers this GPU now: none of the project's bookings for it covers now",
            "its next one that would cover it: b3 (p, 1 x 10de:1b02, 2099-01-01T00:00:00Z to 2099-02-01T00:00:00Z)",
            "set [bookings] mode = \"warn\"",
        ],
    );
    let refused = host.ledger().pop().expect("a refusal record");
    assert_eq!(refused["event"], "refused");
    assert_eq!(refused["checks"], serde_json::json!(["booking"]));

    // A model booking of count 1 that a running VM of the project already uses.
    bookings_file(
        &host,
        &[booking(
            "b4",
            "climate-lab",
            "\"model\": \"10de:1b02\", \"count\": 1",
            "2000-01-01T00:00:00Z",
            "2100-01-01T00:00:00Z",
        )],
    );
    let t4 = "0000:af:00.0";
    host.add(&PciFunction::new(
        t4,
        0x10de,
        0x1b02,
        0x030000,
        Some("vfio-pci"),
        Some(40),
    ));
    host.running(
        "instance-00000001",
        &domain("instance-00000001", 4, &[(t4, true)], NOVA_METADATA).replace(
            "<uuid>00000000-0000-0000-0000-696e7374616e</uuid>",
            "<uuid>00000000-0000-0000-0000-000000000001</uuid>",
        ),
    );
    assert_refused(
        &host.prepare(name, &xml),
        name,
        &["the project's bookings that cover now are used up by its running VMs"],
    );

    // warn: the same words, and it starts.
    host.config(&format!(
        "[bookings]\nmode = \"warn\"\nfile = {:?}\n",
        bookings.display().to_string()
    ));
    let out = host.prepare(name, &xml);
    assert_allowed(&out);
    assert!(
        stderr(&out).contains("WARN booking: 0000:18:00.0"),
        "{}",
        stderr(&out)
    );

    // A domain without Nova's metadata is not subject to bookings.
    host.config(&format!(
        "[bookings]\nmode = \"enforce\"\nfile = {:?}\n",
        bookings.display().to_string()
    ));
    assert_allowed(&host.prepare("plain-gpu", &domain("plain-gpu", 4, &both_functions(), "")));
}

/// Overlapping bookings add up, a GPU that a booking names uses that booking before the
/// model's, and the user counts only with `match_user` (by Nova's user name or id):
/// the hook called as libvirt calls it, with Nova's XML.
#[test]
fn overlapping_bookings_add_up_and_the_user_counts_only_with_match_user() {
    let host = titan_host();
    let second = "0000:af:00.0";
    host.add(&PciFunction::new(
        second,
        0x10de,
        0x1b02,
        0x030000,
        Some("vfio-pci"),
        Some(40),
    ));
    let bookings = host.path(BOOKINGS);
    let config = |match_user: bool| {
        host.config(&format!(
            "[bookings]\nmode = \"enforce\"\nmatch_user = {match_user}\nfile = {:?}\n",
            bookings.display().to_string()
        ))
    };
    config(false);
    let name = "instance-0000002a";
    let mut gpus = both_functions();
    gpus.push((second, true));
    let xml = domain(name, 4, &gpus, NOVA_METADATA);
    let titan = "\"model\": \"10de:1b02\"";
    let gpu = "\"gpu\": \"0000:18:00.0\"";

    // The address booking and an overlapping model booking: 18:00.0 takes the first,
    // af:00.0 the second.
    bookings_file(
        &host,
        &[
            booking(
                "by-model",
                "climate-lab",
                titan,
                "2000-01-01T00:00:00Z",
                "2100-01-01T00:00:00Z",
            ),
            booking(
                "by-address",
                "climate-lab",
                gpu,
                "2026-01-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
            ),
        ],
    );
    assert_allowed(&host.prepare(name, &xml));

    // Two overlapping model bookings of one GPU each: two GPUs.
    bookings_file(
        &host,
        &[
            booking(
                "m1",
                "climate-lab",
                titan,
                "2000-01-01T00:00:00Z",
                "2100-01-01T00:00:00Z",
            ),
            booking(
                "m2",
                "p",
                titan,
                "2026-01-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
            ),
        ],
    );
    assert_allowed(&host.prepare(name, &xml));
    // One of them: the second GPU has none.
    bookings_file(
        &host,
        &[booking(
            "m1",
            "climate-lab",
            titan,
            "2000-01-01T00:00:00Z",
            "2100-01-01T00:00:00Z",
        )],
    );
    let out = host.prepare(name, &xml);
    assert_refused(
        &out,
        name,
        &["FAIL booking: 0000:af:00.0 (10de:1b02 NVIDIA Corporation GP102 [TITAN Xp]): project 'climate-lab' has no booking that covers this GPU now"],
    );
    assert!(
        !stderr(&out).contains("booking: 0000:18:00.0"),
        "{}",
        stderr(&out)
    );

    // Booked for bob: alice's VM starts only while the user does not count.
    let for_user = |user: &str| {
        bookings_file(
            &host,
            &[booking(
                "u1",
                "climate-lab",
                &format!("\"user\": \"{user}\", \"model\": \"10de:1b02\", \"count\": 2"),
                "2000-01-01T00:00:00Z",
                "2100-01-01T00:00:00Z",
            )],
        )
    };
    for_user("bob");
    assert_allowed(&host.prepare(name, &xml));
    config(true);
    let out = host.prepare(name, &xml);
    assert_refused(
        &out,
        name,
        &["FAIL booking: 0000:18:00.0", "FAIL booking: 0000:af:00.0"],
    );
    // Alice by name, and by Nova's user id.
    for_user("alice");
    assert_allowed(&host.prepare(name, &xml));
    for_user("u");
    assert_allowed(&host.prepare(name, &xml));
}

/// The installer's index (`bookings list` writes it, as `metrics` does every 30 s) makes
/// the hook read only its project's bookings; a file changed after the index was
/// written, even to the same size, is read whole again, so a stale index never answers.
#[test]
fn the_hook_reads_through_the_installers_index_only_while_it_describes_the_file() {
    let host = titan_host();
    let bookings = host.path(BOOKINGS);
    host.config(&format!(
        "[bookings]\nmode = \"enforce\"\nfile = {:?}\n",
        bookings.display().to_string()
    ));
    let name = "instance-0000002a";
    let xml = domain(name, 4, &both_functions(), NOVA_METADATA);
    let forever = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z");
    let mut entries: Vec<String> = (0..50)
        .map(|i| {
            booking(
                &format!("o{i}"),
                &format!("other-{i:02}"),
                "\"model\": \"10de:1b02\"",
                forever.0,
                forever.1,
            )
        })
        .collect();
    entries.push(booking(
        "mine",
        "climate-lab",
        "\"gpu\": \"0000:18:00.0\"",
        forever.0,
        forever.1,
    ));
    bookings_file(&host, &entries);
    let list = |host: &HostRoot| {
        let out = Command::new(bin("gpu-passthrough"))
            .args(["bookings", "list", "--json"])
            .env("GPU_PASSTHROUGH_CONFIG", host.path(CONFIG))
            .env("GPU_PASSTHROUGH_STATE_DIR", host.path(STATE_DIR))
            .env("GPU_PASSTHROUGH_HOSTNAME", "gpu-node-1")
            .output()
            .expect("run gpu-passthrough");
        assert!(out.status.success(), "{}", stderr(&out));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
        rows.len()
    };
    assert_eq!(list(&host), 51);
    let index = host.path(&format!("{STATE_DIR}/bookings.index"));
    assert!(index.is_file(), "bookings list wrote no index");
    assert_allowed(&host.prepare(name, &xml));

    // The same file, the same size, one letter of the project's name changed in place:
    // the index no longer describes it and the booking is no longer the project's.
    let text = std::fs::read_to_string(&bookings).expect("read");
    let changed = text.replace("\"climate-lab\"", "\"climate-lob\"");
    assert_eq!(changed.len(), text.len());
    std::fs::write(&bookings, &changed).expect("write in place");
    assert_refused(
        &host.prepare(name, &xml),
        name,
        &["project 'climate-lab' has no booking that covers this GPU now"],
    );

    // Back as it was, indexed again: it starts; then broken in another project's
    // booking after the index was written: the whole file is checked and refuses.
    std::fs::write(&bookings, &text).expect("write back");
    assert_eq!(list(&host), 51);
    assert_allowed(&host.prepare(name, &xml));
    let broken = text.replacen("\"other-07\", ", "\"other-07\" ", 1);
    assert_ne!(broken, text);
    std::fs::write(&bookings, broken).expect("break");
    assert_refused(
        &host.prepare(name, &xml),
        name,
        &["the bookings file cannot be used", "expected `,` or `}`"],
    );
}

#[test]
fn a_broken_or_missing_bookings_file_refuses_in_enforce_and_warns_in_warn() {
    let host = titan_host();
    let bookings = host.path(BOOKINGS);
    let name = "instance-0000002a";
    let xml = domain(name, 4, &both_functions(), NOVA_METADATA);
    for (mode, content) in [
        ("enforce", None),
        ("enforce", Some("{\"bookings\": [\n  {\"id\": \"x\",}\n]}")),
        ("warn", Some("not json")),
    ] {
        host.config(&format!(
            "[bookings]\nmode = {mode:?}\nfile = {:?}\n",
            bookings.display().to_string()
        ));
        match content {
            Some(c) => write_file(&bookings, c),
            None => {
                let _ = std::fs::remove_file(&bookings);
            }
        }
        let out = host.prepare(name, &xml);
        let err = stderr(&out);
        if mode == "enforce" {
            assert_refused(
                &out,
                name,
                &["the bookings file cannot be used", "bookings.json"],
            );
            if content.is_some() {
                assert!(err.contains("bookings.json: line 2, column"), "{err}");
            } else {
                assert!(err.contains("cannot read it"), "{err}");
            }
        } else {
            assert_allowed(&out);
            assert!(
                err.contains("WARN booking: the bookings file cannot be used"),
                "{err}"
            );
        }
    }
}
