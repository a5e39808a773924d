//! qemu-kvm-wrapper, the built binary, in front of a stub "real qemu" that records the
//! argv it was executed with.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use integration_tests::host::{HostRoot, CONFIG};
use integration_tests::{
    argv_recorder, bin, read_recorded, stderr, write_file, write_link, write_script, PciFunction,
    Recorded,
};

const GPU: &str = "0000:18:00.0";
const GPU_AUDIO: &str = "0000:18:00.1";
const NIC: &str = "0000:3b:00.0";

/// A host for one test: a GPU (Titan Xp, both functions) and a NIC in a fake sysfs,
/// and the recorder as the real qemu in the config.
fn gpu_host() -> HostRoot {
    let host = HostRoot::new();
    for (address, device, class) in [(GPU, 0x1b02, 0x030000), (GPU_AUDIO, 0x10ef, 0x040300)] {
        host.add(&PciFunction::new(
            address,
            0x10de,
            device,
            class,
            Some("vfio-pci"),
            Some(30),
        ));
    }
    host.add(&PciFunction::new(
        NIC,
        0x8086,
        0x1572,
        0x020000,
        Some("vfio-pci"),
        Some(31),
    ));
    host.config_with("");
    host
}

/// The wrapper's runs on a [`HostRoot`], with the argv recorder as the real qemu.
trait Wrapper {
    fn config_with(&self, extra: &str);
    fn wrapper(&self, args: &[&str]) -> Command;
    fn run_as(&self, argv0: &str, args: &[OsString]) -> Output;
    fn run(&self, args: &[&str]) -> Output;
    fn recorded(&self) -> Recorded;
    fn recorded_args(&self) -> Vec<String>;
}

impl Wrapper for HostRoot {
    /// The recorder as target plus extra `[wrapper]` lines.
    fn config_with(&self, extra: &str) {
        self.config(&format!(
            "[wrapper]\ntarget = {:?}\n{extra}",
            argv_recorder().display()
        ));
    }

    /// The wrapper as libvirt runs it (argv[0] `/usr/libexec/qemu-kvm`), with this
    /// host's config, sysfs and recorder.
    fn wrapper(&self, args: &[&str]) -> Command {
        let _ = std::fs::remove_file(self.path("argv"));
        let mut c = self.command(&bin("qemu-kvm-wrapper"));
        c.arg0("/usr/libexec/qemu-kvm")
            .args(args)
            .env("ARGV_RECORDER_OUT", self.path("argv"));
        c
    }

    /// Run the wrapper with `args` after argv[0] (which is `argv0`).
    fn run_as(&self, argv0: &str, args: &[OsString]) -> Output {
        self.wrapper(&[])
            .arg0(argv0)
            .args(args)
            .output()
            .expect("run the wrapper")
    }

    fn run(&self, args: &[&str]) -> Output {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.run_as("/usr/libexec/qemu-kvm", &args)
    }

    fn recorded(&self) -> Recorded {
        read_recorded(&self.path("argv"))
    }

    fn recorded_args(&self) -> Vec<String> {
        self.recorded()
            .argv
            .into_iter()
            .map(|a| String::from_utf8(a).expect("utf-8 argv in this test"))
            .collect()
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_owned).collect()
}

/// A libvirt 8.0 command line for a VM with the Titan Xp, legacy `-device` syntax.
const GPU_VM: &str = "-name guest=gpu-vm,debug-threads=on -S -object secret,id=masterKey0 \
    -machine pc-q35-rhel8.6.0,usb=off -accel kvm -cpu host,migratable=on -m 16384 \
    -overcommit mem-lock=off -smp 8,sockets=8,cores=1,threads=1 -no-user-config -nodefaults \
    -device vfio-pci,host=0000:18:00.0,id=hostdev0,bus=pci.5,addr=0x0 \
    -device vfio-pci,host=0000:18:00.1,id=hostdev1,bus=pci.6,addr=0x0 -msg timestamp=on";

#[test]
fn a_gpu_vm_gets_kvm_hidden_and_one_line_says_so() {
    let host = gpu_host();
    let out = host.run(&words(GPU_VM).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected = words(GPU_VM);
    expected.insert(0, "/usr/libexec/qemu-kvm".into());
    let cpu = expected.iter().position(|w| w == "-cpu").expect("-cpu") + 1;
    expected[cpu] = "host,kvm=off,hv-vendor-id=MyFake_KVM,migratable=on".into();
    assert_eq!(
        host.recorded_args(),
        expected,
        "argv[0] and all else unchanged"
    );
    assert_eq!(
        stderr(&out),
        "qemu-kvm-wrapper: -cpu host,migratable=on -> host,kvm=off,hv-vendor-id=MyFake_KVM,migratable=on \
         (vfio-pci 0000:18:00.0 is a VGA controller (class 0x030000))\n"
    );
}

#[test]
fn json_device_syntax_and_short_host_addresses_are_understood() {
    let host = gpu_host();
    let json =
        r#"{"driver":"vfio-pci","host":"0000:18:00.0","id":"hostdev0","bus":"pci.0","addr":"0x5"}"#;
    host.run(&["-cpu", "Skylake-Server-IBRS,ss=on", "-device", json]);
    assert_eq!(
        host.recorded_args()[2],
        "Skylake-Server-IBRS,kvm=off,hv-vendor-id=MyFake_KVM,ss=on"
    );
    host.run(&["-cpu", "host", "-device", "vfio-pci,host=18:00.0"]);
    assert_eq!(
        host.recorded_args()[2],
        "host,kvm=off,hv-vendor-id=MyFake_KVM"
    );
}

#[test]
fn apply_to_decides_which_vms_change() {
    let host = gpu_host();
    let nic_vm = ["-cpu", "host", "-device", "vfio-pci,host=0000:3b:00.0"];
    let plain_vm = ["-cpu", "host", "-device", "virtio-net-pci,netdev=n0"];
    let gpu_vm = ["-cpu", "host", "-device", "vfio-pci,host=0000:18:00.0"];
    let t4_vm = ["-cpu", "host", "-device", "vfio-pci,host=0000:af:00.0"];
    let rewritten = "host,kvm=off,hv-vendor-id=MyFake_KVM";
    host.add(&PciFunction::new(
        "0000:af:00.0",
        0x10de,
        0x1eb8,
        0x030200,
        Some("vfio-pci"),
        Some(60),
    ));
    let cases: [(&str, &[&str], &str); 13] = [
        ("vga", &gpu_vm, rewritten),
        ("vga", &t4_vm, "host"),
        ("vga", &nic_vm, "host"),
        ("vga", &plain_vm, "host"),
        ("gpu", &nic_vm, "host"),
        ("gpu", &plain_vm, "host"),
        ("gpu", &gpu_vm, rewritten),
        ("gpu", &t4_vm, rewritten),
        ("vfio", &nic_vm, rewritten),
        ("vfio", &plain_vm, "host"),
        ("all", &plain_vm, rewritten),
        ("none", &gpu_vm, "host"),
        ("none", &plain_vm, "host"),
    ];
    // No apply_to: "vga", the default.
    for (args, cpu) in [(&gpu_vm, rewritten), (&t4_vm, "host")] {
        host.config_with("");
        let out = host.run(args);
        assert!(out.status.success());
        assert_eq!(host.recorded_args()[2], cpu, "default {args:?}");
    }
    for (apply_to, args, cpu) in cases {
        host.config_with(&format!("apply_to = {apply_to:?}\n"));
        let out = host.run(args);
        assert!(out.status.success());
        assert_eq!(host.recorded_args()[2], cpu, "apply_to={apply_to} {args:?}");
        assert_eq!(
            stderr(&out).is_empty(),
            cpu == "host",
            "a line exactly when it rewrites: {}",
            stderr(&out)
        );
    }
}

#[test]
fn configured_vendor_id_and_hide_kvm_false() {
    let host = gpu_host();
    host.config_with("hv_vendor_id = \"0123456789ab\"\nhide_kvm = false\napply_to = \"all\"\n");
    host.run(&["-cpu", "host,kvm=on"]);
    assert_eq!(
        host.recorded_args()[2],
        "host,hv-vendor-id=0123456789ab,kvm=on"
    );
}

#[test]
fn the_capability_probe_passes_through_untouched_and_silent() {
    let host = gpu_host();
    host.config_with("apply_to = \"all\"\n");
    let probe = "-S -no-user-config -nodefaults -nographic -machine none,accel=kvm:tcg \
        -qmp unix:/var/lib/libvirt/qemu/qmp-abc/qmp.monitor,server=on,wait=off \
        -pidfile /var/lib/libvirt/qemu/qmp-abc/qmp.pid -daemonize";
    let out = host.run(&words(probe).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let mut expected = words(probe);
    expected.insert(0, "/usr/libexec/qemu-kvm".into());
    assert_eq!(host.recorded_args(), expected);
}

#[test]
fn non_utf8_arguments_and_two_cpu_options_arrive_byte_for_byte() {
    let host = gpu_host();
    host.config_with("apply_to = \"all\"\n");
    let raw = |b: &[u8]| OsString::from_vec(b.to_vec());
    let args = vec![
        raw(b"-name"),
        raw(b"guest=caf\xe9\xff"),
        raw(b"-cpu"),
        raw(b"host,model-id=\xfe\xfd"),
        raw(b""),
        raw(b"-cpu"),
        raw(b"max,hv_vendor_id=mine"),
        raw(b"-append"),
        raw(b"console=ttyS0 \x80"),
    ];
    let out = host.run_as("qemu-\u{e9}", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let recorded = host.recorded();
    let mut expected: Vec<Vec<u8>> = vec!["qemu-\u{e9}".as_bytes().to_vec()];
    expected.extend(args.iter().map(|a| a.clone().into_vec()));
    expected[4] = b"host,kvm=off,hv-vendor-id=MyFake_KVM,model-id=\xfe\xfd".to_vec();
    expected[7] = b"max,kvm=off,hv_vendor_id=mine".to_vec();
    assert_eq!(recorded.argv, expected);
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line for both: {}",
        stderr(&out)
    );
}

#[test]
fn help_is_left_alone() {
    let host = gpu_host();
    host.config_with("apply_to = \"all\"\n");
    for value in ["help", "?"] {
        let out = host.run(&["-cpu", value]);
        assert_eq!(host.recorded_args()[2], value);
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn a_bad_value_is_one_warning_and_the_rest_still_applies() {
    let host = gpu_host();
    host.config_with("hv_vendor_id = \"much_too_long_id\"\nhide_kvm = false\napply_to = \"all\"\n");
    let out = host.run(&["-cpu", "host"]);
    assert!(out.status.success());
    assert_eq!(host.recorded_args()[2], "host,hv-vendor-id=MyFake_KVM");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "the warning and the rewrite: {err}");
    assert!(
        lines[0].contains("config.toml: line 3: wrapper.hv_vendor_id:"),
        "{err}"
    );
    assert!(lines[0].contains("using the defaults"), "{err}");
}

#[test]
fn a_file_that_is_not_toml_means_defaults_never_a_refused_start() {
    let host = gpu_host();
    // Nothing in the file can be trusted, so the target is the default one. The loop
    // guard set on entry makes the wrapper name the target it would run and stop there,
    // whatever this machine has at /usr/libexec/qemu-kvm.orig: the warning comes first,
    // then exit 127 naming the default target.
    host.config("[wrapper\ntarget = 1");
    let out = host
        .wrapper(&["-cpu", "host"])
        .env("GPU_PASSTHROUGH_WRAPPER_ACTIVE", "1")
        .output()
        .expect("run the wrapper");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "qemu-kvm-wrapper: {}: line 1: not valid TOML",
            host.path(CONFIG).display()
        )) && lines[0].ends_with("; using the defaults for these"),
        "{err}"
    );
    assert_eq!(
        lines[1],
        format!(
            "qemu-kvm-wrapper: cannot execute the real qemu /usr/libexec/qemu-kvm.orig: it led \
             back to this wrapper (GPU_PASSTHROUGH_WRAPPER_ACTIVE is set), which would loop. \
             Repair: run `gpu-passthrough divert` (it puts the real qemu back at \
             /usr/libexec/qemu-kvm.orig), or set [wrapper] target in {}",
            host.path(CONFIG).display()
        )
    );
}

#[test]
fn an_unreadable_config_is_a_warning_and_defaults() {
    let host = gpu_host();
    // A directory where the file should be: reading fails with EISDIR, even for root.
    let dir = host.path("config.d");
    std::fs::create_dir(&dir).expect("mkdir");
    let out = Command::new(bin("qemu-kvm-wrapper"))
        .args(["-version"])
        .env_clear()
        .env("GPU_PASSTHROUGH_CONFIG", &dir)
        .output()
        .expect("run");
    let err = stderr(&out);
    // EISDIR: no hint about the qemu user's permissions (that is for EACCES only).
    assert_eq!(
        err.lines().next(),
        Some(
            format!(
                "qemu-kvm-wrapper: cannot read {}: Is a directory (os error 21); using the defaults",
                dir.display()
            )
            .as_str()
        ),
        "{err}"
    );
}

#[test]
fn an_unreadable_class_counts_as_a_gpu_and_says_why() {
    let host = gpu_host();
    host.sysfs()
        .make_unreadable(&format!("devices/pci0000:3b/{NIC}/class"))
        .expect("make class unreadable");
    let out = host.run(&["-cpu", "host", "-device", "vfio-pci,host=0000:3b:00.0"]);
    assert_eq!(
        host.recorded_args(),
        [
            "/usr/libexec/qemu-kvm",
            "-cpu",
            "host,kvm=off,hv-vendor-id=MyFake_KVM",
            "-device",
            "vfio-pci,host=0000:3b:00.0"
        ]
    );
    assert_eq!(
        stderr(&out),
        format!(
            "qemu-kvm-wrapper: -cpu host -> host,kvm=off,hv-vendor-id=MyFake_KVM (vfio-pci 0000:3b:00.0 \
             counted as a GPU: cannot read its class: {}: Is a directory (os error 21))\n",
            host.sysfs().root().join("bus/pci/devices/0000:3b:00.0/class").display()
        )
    );
}

#[test]
fn the_real_qemus_exit_status_and_environment_come_through() {
    let host = gpu_host();
    let out = Command::new(bin("qemu-kvm-wrapper"))
        .args(["-S"])
        .env("GPU_PASSTHROUGH_CONFIG", host.path(CONFIG))
        .env("ARGV_RECORDER_OUT", host.path("argv"))
        .env("ARGV_RECORDER_EXIT", "7")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(7),
        "the wrapper is replaced, not a parent"
    );
    assert_eq!(
        host.recorded().guard.as_deref(),
        Some(argv_recorder().to_str().expect("utf-8 path"))
    );
}

fn assert_cannot_exec(out: &Output, target: &Path, why: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot execute the real qemu {}",
            target.display()
        )),
        "{err}"
    );
    assert!(err.contains(why), "{err}");
    assert!(
        err.contains("gpu-passthrough divert"),
        "names the repair: {err}"
    );
}

#[test]
fn a_missing_target_is_exit_127_naming_path_and_repair() {
    let host = gpu_host();
    let target = host.path("no-such-qemu");
    host.config(&format!("[wrapper]\ntarget = {:?}\n", target.display()));
    assert_cannot_exec(&host.run(&["-S"]), &target, "No such file or directory");
}

#[test]
fn a_target_that_is_not_executable_is_exit_127() {
    let host = gpu_host();
    let target = host.path("qemu-not-executable");
    write_file(&target, "not a program");
    host.config(&format!("[wrapper]\ntarget = {:?}\n", target.display()));
    assert_cannot_exec(&host.run(&["-S"]), &target, "Permission denied");
}

#[test]
fn a_target_that_is_the_wrapper_itself_is_refused_not_looped() {
    let host = gpu_host();
    let target = host.path("qemu-kvm.orig");
    write_link(&target, bin("qemu-kvm-wrapper"));
    host.config(&format!("[wrapper]\ntarget = {:?}\n", target.display()));
    assert_cannot_exec(&host.run(&["-S"]), &target, "is this wrapper itself");
}

#[test]
fn a_target_that_leads_back_to_the_wrapper_is_refused_not_looped() {
    let host = gpu_host();
    let target = host.path("qemu-script");
    write_script(
        &target,
        &format!(
            "#!/bin/sh\nexec {} \"$@\"\n",
            bin("qemu-kvm-wrapper").display()
        ),
    );
    host.config(&format!("[wrapper]\ntarget = {:?}\n", target.display()));
    let out = host.run(&["-S"]);
    assert_cannot_exec(&out, &target, "led back to this wrapper");
}

#[test]
fn the_built_wrapper_carries_the_marker_the_installer_looks_for() {
    let bytes = std::fs::read(bin("qemu-kvm-wrapper")).expect("read the wrapper");
    assert!(host_model::is_wrapper_binary(&bytes));
    let stub = std::fs::read(argv_recorder()).expect("read the stub");
    assert!(!host_model::is_wrapper_binary(&stub));
}
