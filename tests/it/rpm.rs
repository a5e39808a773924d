//! The RPM: built by rpm/build-rpm, checked, then installed into a scratch root
//! (`rpm --root DIR`) beside a stand-in qemu-kvm-core that the test builds, updated,
//! erased; at every step, what /usr/libexec/qemu-kvm and .orig are.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{argv_recorder, bin_dir, missing_prerequisite, which, write_file};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Build a stand-in binary RPM from `files` (path in the package, source file).
fn stand_in_rpm(
    work: &Path,
    name: &str,
    version: &str,
    release: &str,
    files: &[(&str, PathBuf)],
    links: &[(&str, &str)],
) -> PathBuf {
    let top = work.join(format!("build-{name}-{version}-{release}"));
    let mut install = String::new();
    let mut list = String::new();
    for (path, source) in files {
        install.push_str(&format!(
            "install -D -m 0755 {} %{{buildroot}}{path}\n",
            source.display()
        ));
        list.push_str(&format!("{path}\n"));
    }
    for (link, target) in links {
        install.push_str(&format!(
            "mkdir -p $(dirname %{{buildroot}}{link}); ln -s {target} %{{buildroot}}{link}\n"
        ));
        list.push_str(&format!("{link}\n"));
    }
    let spec = top.join(format!("{name}.spec"));
    write_file(
        &spec,
        format!(
            "%global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n%global _build_id_links none\n\
             Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: stand-in for tests\nLicense: MIT\n\
             AutoReqProv: no\n\n%description\nA stand-in package built by the gpu-passthrough tests.\n\n\
             %install\n{install}\n%files\n{list}"
        ),
    );
    run(Command::new("rpmbuild")
        .args(["-bb", "--quiet", "--nodeps", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec));
    let rpm = top.join(format!("RPMS/x86_64/{name}-{version}-{release}.x86_64.rpm"));
    assert!(rpm.is_file(), "{} was not built", rpm.display());
    rpm
}

#[test]
fn the_rpm_installs_diverts_follows_qemu_updates_and_erases_cleanly() {
    for tool in ["rpmbuild", "rpm", "cargo", "tar"] {
        if which(tool).is_none() {
            missing_prerequisite(&format!(
                "{tool} is not installed (scripts/setup installs rpm)"
            ));
            return;
        }
    }
    let busybox = Path::new("/bin/busybox");
    let static_busybox = Command::new("file")
        .arg(busybox)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"));
    if !static_busybox {
        missing_prerequisite("a static /bin/busybox (apt-get install busybox-static)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");

    // Build ours, from the binaries of this test run's profile.
    let out = run(Command::new(repo.join("rpm/build-rpm")).arg(bin_dir()));
    let built: Vec<PathBuf> = text(&out).lines().map(PathBuf::from).collect();
    let ours = built
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".x86_64.rpm"))
        .expect("a binary RPM")
        .clone();
    assert!(
        built
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".src.rpm")),
        "{built:?}"
    );

    let query = |args: &[&str]| {
        text(&run(Command::new("rpm")
            .args(["-qp"])
            .args(args)
            .arg(&ours)))
    };
    let files = query(&["-l"]);
    for f in [
        "/usr/libexec/gpu-passthrough/qemu-kvm-wrapper",
        "/usr/libexec/gpu-passthrough/gpu-passthrough-hook",
        "/usr/sbin/gpu-passthrough",
        "/etc/gpu-passthrough/config.toml",
        "/usr/share/gpu-passthrough/gpu-passthrough.cil",
        "/usr/lib/systemd/system/gpu-passthrough-metrics.service",
        "/usr/lib/systemd/system/gpu-passthrough-metrics.timer",
        "/usr/share/gpu-passthrough/grafana/gpu-passthrough.json",
        "/usr/share/man/man8/gpu-passthrough-install.8.gz",
        "/usr/share/licenses/gpu-passthrough-0.1.0/LICENSE-MIT",
        "/usr/share/doc/gpu-passthrough-0.1.0/README.md",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} missing from:\n{files}");
    }
    assert!(!files.contains(".build-id"), "{files}");
    assert_eq!(query(&["-c"]), "/etc/gpu-passthrough/config.toml\n");
    let scripts = query(&["--scripts"]);
    assert!(
        scripts.contains("postinstall scriptlet (using /bin/sh):")
            && scripts.contains("/usr/sbin/gpu-passthrough divert"),
        "{scripts}"
    );
    assert!(
        scripts.contains("preuninstall scriptlet (using /bin/sh):")
            && scripts.contains("/usr/sbin/gpu-passthrough undivert"),
        "{scripts}"
    );
    let triggers = query(&["--triggers"]);
    assert!(
        triggers.contains("triggerin scriptlet (using /bin/sh) -- qemu-kvm-core"),
        "{triggers}"
    );
    assert!(
        triggers.contains("triggerpostun scriptlet (using /bin/sh) -- qemu-kvm-core"),
        "{triggers}"
    );
    let requires = query(&["--requires"]);
    assert!(
        !requires.contains("libc.so") && !requires.contains("GLIBC"),
        "static binaries need no glibc: {requires}"
    );

    if let Some(rpmlint) = which("rpmlint") {
        let out = Command::new(rpmlint)
            .args(["-c", "rpm/rpmlint.toml"])
            .args(&built)
            .arg("rpm/gpu-passthrough.spec")
            .current_dir(repo)
            .output()
            .expect("rpmlint");
        let report = text(&out);
        assert!(
            report.contains(" 0 errors,"),
            "rpmlint found errors:\n{report}"
        );
    } else {
        missing_prerequisite("rpmlint is not installed (apt-get install rpmlint)");
    }

    if !is_root() {
        missing_prerequisite("not root: rpm --root needs chroot for the scriptlets");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    // A base that gives the scratch root its /bin/sh (a static busybox) and applets.
    let applets = [
        "sh", "mkdir", "ln", "rm", "readlink", "echo", "[", "test", "cat", "true", "sed",
    ];
    let links: Vec<(String, &str)> = applets
        .iter()
        .map(|a| (format!("/bin/{a}"), "busybox"))
        .collect();
    let links: Vec<(&str, &str)> = links.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    let base = stand_in_rpm(
        work.path(),
        "scratch-base",
        "1.0",
        "1",
        &[("/bin/busybox", busybox.to_owned())],
        &links,
    );
    // qemu-kvm-core 6.2.0-1 and -2: the argv recorder with different trailing bytes.
    let mut qemu_rpms = Vec::new();
    let mut qemu_bytes = Vec::new();
    for release in ["1", "2"] {
        let mut bytes = std::fs::read(argv_recorder()).expect("recorder");
        bytes.extend_from_slice(format!("qemu-kvm-core 6.2.0-{release}").as_bytes());
        let src = work.path().join(format!("qemu-kvm-{release}"));
        std::fs::write(&src, &bytes).expect("write");
        qemu_rpms.push(stand_in_rpm(
            work.path(),
            "qemu-kvm-core",
            "6.2.0",
            release,
            &[("/usr/libexec/qemu-kvm", src)],
            &[],
        ));
        qemu_bytes.push(bytes);
    }

    // The same lifecycle on three layouts: EL8 runs the monolithic libvirtd, EL9 ships
    // both and defaults to virtqemud, EL10 has virtqemud only; qemu-kvm-core's file is
    // /usr/libexec/qemu-kvm on all three.
    let unit = |name: &str, text: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, text).expect("unit");
        p
    };
    let daemon = |name: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho '{name} (libvirt) 0.0.0'\n")).expect("daemon");
        p
    };
    let libvirtd_files = vec![
        ("/usr/sbin/libvirtd", daemon("libvirtd")),
        (
            "/usr/lib/systemd/system/libvirtd.service",
            unit(
                "libvirtd.service",
                "[Service]\nExecStart=/usr/sbin/libvirtd\n",
            ),
        ),
    ];
    let virtqemud_files = vec![
        ("/usr/sbin/virtqemud", daemon("virtqemud")),
        (
            "/usr/lib/systemd/system/virtqemud.service",
            unit(
                "virtqemud.service",
                "[Service]\nExecStart=/usr/sbin/virtqemud --timeout 120\n",
            ),
        ),
        (
            "/usr/lib/systemd/system/virtqemud.socket",
            unit(
                "virtqemud.socket",
                "[Socket]\nListenStream=/run/libvirt/virtqemud-sock\n",
            ),
        ),
    ];
    for (layout, files) in [
        ("el8", libvirtd_files.clone()),
        (
            "el9",
            [libvirtd_files.clone(), virtqemud_files.clone()].concat(),
        ),
        ("el10", virtqemud_files.clone()),
    ] {
        let files: Vec<(&str, PathBuf)> = files;
        let libvirt = stand_in_rpm(
            work.path(),
            &format!("libvirt-daemon-{layout}"),
            "1.0",
            "1",
            &files,
            &[],
        );
        lifecycle(
            layout,
            work.path(),
            &base,
            &libvirt,
            &qemu_rpms,
            &qemu_bytes,
            &ours,
        );
    }
}

/// Install, follow a qemu update, erase; erase qemu under the diversion: on one layout.
fn lifecycle(
    layout: &str,
    work: &Path,
    base: &Path,
    libvirt: &Path,
    qemu_rpms: &[PathBuf],
    qemu_bytes: &[Vec<u8>],
    ours: &Path,
) {
    let root = work.join(format!("root-{layout}"));
    for d in ["var/tmp", "tmp", "dev"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    let rpm = |args: &[&str]| {
        let mut c = Command::new("rpm");
        c.arg("--root").arg(&root).args(args);
        c
    };
    run(&mut rpm(&["--initdb"]));
    run(rpm(&["-i"]).arg(base));
    run(rpm(&["-i"]).arg(libvirt));
    run(rpm(&["-i"]).arg(&qemu_rpms[0]));

    let qemu = root.join("usr/libexec/qemu-kvm");
    let orig = root.join("usr/libexec/qemu-kvm.orig");
    let hook = root.join("etc/libvirt/hooks/qemu.d/gpu-passthrough");
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let wrapper = || read(&root.join("usr/libexec/gpu-passthrough/qemu-kvm-wrapper"));

    // A policy store (SELinux need not be enabled), and stand-ins for semodule and
    // restorecon that write down how they were called.
    std::fs::create_dir_all(root.join("var/lib/selinux/targeted")).expect("store");
    for tool in ["semodule", "restorecon"] {
        integration_tests::write_script(
            &root.join(format!("usr/sbin/{tool}")),
            &format!("#!/bin/sh\necho \"{tool} $*\" >> /selinux.log\n"),
        );
    }

    // Install: diverted, hook linked.
    let out = run(rpm(&["-i"]).arg(ours));
    assert!(
        text(&out).contains("restart the libvirt daemon that runs the qemu driver"),
        "{}",
        text(&out)
    );
    assert_eq!(
        read(&qemu),
        wrapper(),
        "after rpm -i, qemu-kvm is the wrapper"
    );
    assert_eq!(
        read(&orig),
        qemu_bytes[0],
        "after rpm -i, .orig is qemu-kvm-core 6.2.0-1"
    );
    assert_eq!(
        std::fs::read_link(&hook).expect("hook link"),
        Path::new("/usr/libexec/gpu-passthrough/gpu-passthrough-hook")
    );

    let owner = text(&run(&mut rpm(&[
        "-qf",
        "/etc/libvirt/hooks/qemu.d/gpu-passthrough",
    ])));
    assert!(
        owner.starts_with("gpu-passthrough-0.1.0-1"),
        "rpm -qf names the package: {owner}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("selinux.log")).expect("log"),
        "restorecon -F /usr/libexec/qemu-kvm /usr/libexec/qemu-kvm.orig\n\
         semodule -s targeted -X 200 -i /usr/share/gpu-passthrough/gpu-passthrough.cil\n\
         restorecon -R /etc/gpu-passthrough /var/lib/gpu-passthrough /etc/libvirt/hooks/qemu.d\n\
         restorecon -F /usr/libexec/qemu-kvm /usr/libexec/qemu-kvm.orig\n",
        "%post: divert, the module at priority 200, then every path it labels and the \
         scriptlets made; then the qemu-kvm-core trigger's divert repairs the labels again"
    );
    std::fs::remove_file(root.join("selinux.log")).expect("rm log");

    // qemu-kvm-core update: its new binary lands on the wrapper; the trigger re-diverts.
    run(rpm(&["-U"]).arg(&qemu_rpms[1]));
    assert_eq!(
        read(&qemu),
        wrapper(),
        "after the qemu update, qemu-kvm is the wrapper again"
    );
    assert_eq!(
        read(&orig),
        qemu_bytes[1],
        "after the qemu update, .orig is the new qemu"
    );
    let verify = rpm(&["-V", "qemu-kvm-core"]).output().expect("rpm -V");
    let verify = text(&verify);
    println!("rpm -V qemu-kvm-core on a diverted host: {verify}");
    assert!(
        verify.contains("/usr/libexec/qemu-kvm") && verify.contains("5"),
        "rpm -V reports the diverted file: {verify}"
    );

    // Erase while `install` has changed the host: rpm -e says what stays and how to
    // undo it, and keeps the records that undo needs.
    let state = root.join("var/lib/gpu-passthrough/state.json");
    write_file(
        &state,
        r#"{"files":[{"path":"/etc/modprobe.d/gpu-passthrough.conf","backup":null,"mode":420}],"kernel_args":["intel_iommu=on"],"hook":null,"diverted":false,"exact":true}"#,
    );
    std::fs::remove_file(root.join("selinux.log")).ok();
    let out = run(&mut rpm(&["-e", "gpu-passthrough"]));
    let said = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "gpu-passthrough: 'gpu-passthrough install' changed this host, and erasing the package leaves those changes (kernel arguments, the vfio-pci binding, the files below) in place:\n",
        "remove /etc/modprobe.d/gpu-passthrough.conf\n",
        "reinstall the package and run 'gpu-passthrough uninstall'",
    ] {
        assert!(said.contains(needle), "missing {needle:?} in rpm -e's output:\n{said}");
    }
    assert!(state.exists(), "the records stay for a later uninstall");
    std::fs::remove_file(&state).expect("rm state");
    assert_eq!(
        std::fs::read_to_string(root.join("selinux.log")).expect("log"),
        "restorecon -F /usr/libexec/qemu-kvm\n\
         semodule -s targeted -X 200 -r gpu-passthrough\n\
         restorecon -R /etc/gpu-passthrough /var/lib/gpu-passthrough\n",
        "the module removed on erase, restorecon after"
    );

    // Erased: the real qemu back, no .orig, no hook link; qemu-kvm-core verifies clean.
    assert_eq!(
        read(&qemu),
        qemu_bytes[1],
        "after rpm -e, qemu-kvm is the real qemu"
    );
    assert!(!orig.exists(), "after rpm -e, no .orig");
    assert!(
        hook.symlink_metadata().is_err(),
        "after rpm -e, no hook link"
    );
    run(&mut rpm(&["-V", "qemu-kvm-core"]));

    // Erasing qemu-kvm-core under a diversion leaves no stale .orig behind.
    run(rpm(&["-i"]).arg(ours));
    assert!(orig.exists());
    run(&mut rpm(&["-e", "qemu-kvm-core"]));
    assert!(
        !qemu.exists() && !orig.exists(),
        "qemu-kvm and .orig both gone"
    );
    run(&mut rpm(&["-e", "gpu-passthrough"]));
}
