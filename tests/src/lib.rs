//! Helpers shared by the suite's tests: where the built binaries are, fake host trees
//! shaped like a real host's sysfs, and prerequisites that must fail in CI.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

pub mod host;

/// The directory cargo put this workspace's binaries in (`target/<triple>/<profile>`),
/// found from the running test executable (`.../<profile>/deps/it-HASH`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable lives in deps/");
    deps.parent()
        .expect("deps/ lives in the profile directory")
        .to_owned()
}

/// A built binary of the workspace. Panics, naming the fix, when it was not built or
/// is older than its sources: `cargo test` does not rebuild another package's binaries.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    let fix = "build the workspace first (`cargo build --workspace`, which `make test` does)";
    let built = fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{} is missing ({e}): {fix}", path.display()));
    let crate_dir = match name {
        "qemu-kvm-wrapper" => "qemu-wrapper",
        "gpu-passthrough-hook" => "libvirt-hook",
        "gpu-passthrough" => "installer",
        _ => return path,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    // Only src/ goes into a binary: a package's own tests/ and benches/ do not.
    for dir in [crate_dir, "host-model"] {
        if let Some(newer) =
            newest_source(&workspace.join(dir).join("src")).filter(|(t, _)| *t > built)
        {
            panic!(
                "{} is older than {}: {fix}",
                path.display(),
                newer.1.display()
            );
        }
    }
    path
}

/// The most recently modified file under `dir` (sources, not build output).
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        // What every change to a binary touches: its Rust sources. (A file that only
        // one binary includes, such as rpm/gpu-passthrough.cil, would not relink the
        // others, so it is not looked at.)
        let is_input = |p: &Path| p.extension().is_some_and(|x| x == "rs");
        let found = if path.is_dir() {
            newest_source(&path)
        } else if is_input(&path) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, path))
        } else {
            None
        };
        if let Some(f) = found {
            if newest.as_ref().is_none_or(|n| f.0 > n.0) {
                newest = Some(f);
            }
        }
    }
    newest
}

/// Whether a missing prerequisite must fail the test (in CI) rather than skip it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skip (outside CI, with one loud line) or fail (in CI) for a missing prerequisite.
/// Returns `true` when the caller should return early.
pub fn missing_prerequisite(what: &str) -> bool {
    assert!(!in_ci(), "prerequisite missing in CI: {what}");
    eprintln!("SKIP: {what}");
    true
}

/// Find an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Write `contents` to `path`, creating parent directories. Panics naming the path.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Make `link` a symlink to `target`, replacing what is there and creating parent
/// directories. Panics naming both.
pub fn write_link(link: &Path, target: impl AsRef<Path>) {
    let target = target.as_ref();
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).unwrap_or_else(|e| panic!("cannot replace {}: {e}", link.display()));
    }
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    symlink(target, link).unwrap_or_else(|e| {
        panic!(
            "cannot link {} -> {}: {e}",
            link.display(),
            target.display()
        )
    });
}

/// Write an executable script.
pub fn write_script(path: &Path, text: &str) {
    write_file(path, text);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// One PCI function of a fake host.
#[derive(Debug, Clone)]
pub struct PciFunction<'a> {
    /// `0000:18:00.0`
    pub address: &'a str,
    pub vendor: u16,
    pub device: u16,
    /// 24-bit class code, e.g. 0x030000 for VGA.
    pub class: u32,
    pub driver: Option<&'a str>,
    pub iommu_group: Option<u32>,
}

impl<'a> PciFunction<'a> {
    /// `PciFunction::new("0000:18:00.0", 0x10de, 0x1b02, 0x030000, Some("vfio-pci"), Some(30))`
    pub fn new(
        address: &'a str,
        vendor: u16,
        device: u16,
        class: u32,
        driver: Option<&'a str>,
        iommu_group: Option<u32>,
    ) -> Self {
        PciFunction {
            address,
            vendor,
            device,
            class,
            driver,
            iommu_group,
        }
    }
}

/// A fake sysfs tree laid out like a real host's: the function's directory under
/// `devices/pci0000:BB/`, a `bus/pci/devices/ADDR` link to it, `driver` and
/// `iommu_group` links, `kernel/iommu_groups/N/devices/ADDR` links back.
#[derive(Debug)]
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    pub fn new(root: &Path) -> Self {
        fs::create_dir_all(root.join("bus/pci/devices"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        FakeSysfs {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The function's real directory (what `bus/pci/devices/ADDR` points to).
    pub fn device_dir(&self, address: &str) -> PathBuf {
        let (domain_bus, _) = address.rsplit_once(':').expect("address DDDD:BB:DD.F");
        self.root
            .join(format!("devices/pci{domain_bus}"))
            .join(address)
    }

    /// Add the function, or replace what an earlier `add` said about it.
    pub fn add(&self, f: &PciFunction<'_>) -> &Self {
        let dir = self.device_dir(f.address);
        write_file(&dir.join("vendor"), format!("0x{:04x}\n", f.vendor));
        write_file(&dir.join("device"), format!("0x{:04x}\n", f.device));
        write_file(&dir.join("class"), format!("0x{:06x}\n", f.class));
        let rel = dir.strip_prefix(&self.root).expect("dir is under root");
        write_link(
            &self.root.join("bus/pci/devices").join(f.address),
            Path::new("../../..").join(rel),
        );
        for link in ["driver", "iommu_group"] {
            let _ = fs::remove_file(dir.join(link));
        }
        if let Some(driver) = f.driver {
            let driver_dir = self.root.join("bus/pci/drivers").join(driver);
            fs::create_dir_all(&driver_dir).expect("create driver dir");
            let up = "../".repeat(rel.components().count());
            write_link(&dir.join("driver"), format!("{up}bus/pci/drivers/{driver}"));
        }
        if let Some(group) = f.iommu_group {
            let group_dir = self
                .root
                .join(format!("kernel/iommu_groups/{group}/devices"));
            fs::create_dir_all(&group_dir).expect("create group dir");
            let up = "../".repeat(rel.components().count());
            write_link(
                &dir.join("iommu_group"),
                format!("{up}kernel/iommu_groups/{group}"),
            );
            write_link(
                &group_dir.join(f.address),
                format!("../../../../{}", rel.display()),
            );
        }
        self
    }

    /// Make a file of the tree unreadable (as SELinux would) by replacing it with a
    /// directory: reading it fails even for root, which ignores file modes.
    pub fn make_unreadable(&self, relative: &str) -> io::Result<()> {
        let path = self.root.join(relative);
        fs::remove_file(&path)?;
        fs::create_dir(&path)
    }
}

/// The argv recorder (tests/fixtures/argv-recorder.c), compiled statically once per
/// build directory: a stand-in for the real qemu that writes down its argv.
pub fn argv_recorder() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/argv-recorder.c");
            let out = bin_dir().join("argv-recorder");
            compile_c(&source, &out);
            out
        })
        .clone()
}

/// Compile one C file into a static executable with gcc. The result is renamed into
/// place, so parallel test processes never see a half-written binary.
pub fn compile_c(source: &Path, out: &Path) {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let status = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&tmp)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run gcc (install build-essential): {e}"));
    assert!(status.success(), "gcc failed on {}", source.display());
    fs::rename(&tmp, out).unwrap_or_else(|e| panic!("cannot rename to {}: {e}", out.display()));
}

/// What the argv recorder wrote: the argv it got, and the loop-guard variable if set.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    pub argv: Vec<Vec<u8>>,
    pub guard: Option<String>,
}

pub fn read_recorded(path: &Path) -> Recorded {
    let bytes =
        fs::read(path).unwrap_or_else(|e| panic!("the stub left no {}: {e}", path.display()));
    let mut parts: Vec<Vec<u8>> = bytes.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    let tail = parts.pop().expect("split yields at least one part");
    let guard = tail
        .strip_prefix(b"env GPU_PASSTHROUGH_WRAPPER_ACTIVE=")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Recorded { argv: parts, guard }
}

/// A command's stderr, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's stdout, as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert that a run ended with exit status `code` and said `needle` on stderr.
#[track_caller]
pub fn assert_exit(out: &std::process::Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "missing {needle:?} in stderr: {stderr}"
    );
}

/// The SELinux label of `path` (the `security.selinux` xattr, without its NUL), if any.
pub fn label_of(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in paths");
    let mut buf = vec![0u8; 1024];
    // SAFETY: both names are NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .to_owned()
    })
}

/// Give `path` the SELinux label `label` (as a `security.selinux` xattr, NUL-terminated
/// as the kernel stores it). Root can do this on ext4 without SELinux. Panics naming
/// the path.
pub fn set_label(path: &Path, label: &str) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in paths");
    let value = format!("{label}\0");
    // SAFETY: both names are NUL-terminated; value is readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c"security.selinux".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "cannot label {} {label}: {} (root on ext4 or xfs is needed)",
        path.display(),
        io::Error::last_os_error()
    );
}
