//! The command-line rewrite done by `qemu-kvm-wrapper`, as pure functions.
//!
//! libvirt runs `/usr/libexec/qemu-kvm` with a command line such as
//!
//! ```text
//! qemu-kvm -name guest=vm1 -S -machine pc-q35-rhel8.6.0 -cpu host,migratable=on \
//!          -device vfio-pci,host=0000:18:00.0,id=hostdev0 ...
//! ```
//!
//! The wrapper changes exactly one thing: each `-cpu` value gets `kvm=off` and
//! `hv-vendor-id=ID` right after its model name, so that the guest's GPU driver does not
//! see a hypervisor it refuses to run under:
//!
//! ```text
//! -cpu host,kvm=off,hv-vendor-id=MyFake_KVM,migratable=on
//! ```
//!
//! A property that the value sets already is left as it is (QEMU takes the last of
//! duplicate properties, so appending ours would silently override the operator's).
//! Every other argument is returned unchanged, byte for byte.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use std::path::Path;

use host_model::config::ApplyTo;
use host_model::pci::{self, PciAddress};

/// What to put into each `-cpu` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection<'a> {
    /// Add `kvm=off` (hide the KVM signature and paravirtual features).
    pub hide_kvm: bool,
    /// Add `hv-vendor-id=ID`. Must be valid for QEMU: no comma (see
    /// [`host_model::config::HvVendorId`]).
    pub hv_vendor_id: &'a str,
}

/// QEMU options that take no argument. Every other option consumes the next word,
/// which is how QEMU itself reads its command line; knowing this list is what keeps a
/// word like `-cpu` that is the *value* of another option from being taken for the
/// option. (From qemu-options.hx, `DEF(name, 0, ...)`, current and removed ones.)
const OPTIONS_WITHOUT_ARGUMENT: &[&[u8]] = &[
    b"h",
    b"help",
    b"version",
    b"S",
    b"s",
    b"snapshot",
    b"nographic",
    b"nodefaults",
    b"no-user-config",
    b"nodefconfig",
    b"no-reboot",
    b"no-shutdown",
    b"daemonize",
    b"enable-kvm",
    b"no-kvm",
    b"no-kvm-irqchip",
    b"no-kvm-pit",
    b"no-kvm-pit-reinjection",
    b"enable-nesting",
    b"no-acpi",
    b"no-hpet",
    b"usb",
    b"portrait",
    b"full-screen",
    b"win2k-hack",
    b"rtc-td-hack",
    b"no-fd-bootchk",
    b"singlestep",
    b"one-insn-per-tb",
    b"preconfig",
    b"xen-attach",
    b"xen-domid-restrict",
    b"only-migratable",
    b"enable-sync-profile",
    b"mem-prealloc",
    b"audio-help",
    b"alt-grab",
    b"ctrl-grab",
    b"no-quit",
    b"no-frame",
    b"sdl",
    b"curses",
    b"show-cursor",
    b"localtime",
    b"std-vga",
    b"enable-fips",
    b"semihosting",
    b"old-param",
    b"async-teardown",
    b"perfmap",
    b"jitdump",
    b"tdf",
    b"virtfs_synth",
    b"no-kqemu",
    b"kernel-kqemu",
    b"enable-kqemu",
];

/// One option of a QEMU command line that takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionArg<'a> {
    /// The option's name without its dashes (`--cpu` and `-cpu` are both `cpu`).
    pub name: &'a [u8],
    /// Index in argv of the option's argument.
    pub value_index: usize,
}

/// The options of `argv` (argv[0] excluded) that take an argument, read the way QEMU
/// reads them: a word not starting with `-` is a disk image, an option not in
/// [`OPTIONS_WITHOUT_ARGUMENT`] takes the next word as its argument.
pub fn options_with_argument(argv: &[OsString]) -> Vec<OptionArg<'_>> {
    let mut found = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].as_bytes();
        i += 1;
        let Some(name) = word.strip_prefix(b"-") else {
            continue;
        };
        let name = name.strip_prefix(b"-").unwrap_or(name);
        if OPTIONS_WITHOUT_ARGUMENT.contains(&name) || i >= argv.len() {
            continue;
        }
        found.push(OptionArg {
            name,
            value_index: i,
        });
        i += 1;
    }
    found
}

/// Indices in argv of every `-cpu` (or `--cpu`) value.
pub fn cpu_value_indices(argv: &[OsString]) -> Vec<usize> {
    options_with_argument(argv)
        .into_iter()
        .filter(|o| o.name == b"cpu")
        .map(|o| o.value_index)
        .collect()
}

/// Split a `-cpu` value the way QEMU's x86 parser does: the model name up to the first
/// comma, then a property at every comma. `,,` is no escape there (QEMU 7.2 reads
/// `qemu64,model-id=a,,kvm=off` as `model-id=a` and `kvm=off`): it is an empty part,
/// which QEMU skips. Joining the parts with `,` gives the value back.
pub fn split_props(value: &[u8]) -> Vec<&[u8]> {
    value.split(|&b| b == b',').collect()
}

/// Split a QemuOpts value (the legacy `-device driver,key=value` form) at its commas;
/// there `,,` is an escaped comma, not a separator. The parts keep their escapes.
fn split_opts(value: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < value.len() {
        if value[i] == b',' {
            if value.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            parts.push(&value[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&value[start..]);
    parts
}

/// The property a `-cpu` part sets, in QEMU's canonical spelling: `kvm=off`, `+kvm`,
/// `-kvm` and `kvm` all set `kvm`; `hv_vendor_id=x` sets `hv-vendor-id`.
fn cpu_prop_name(part: &[u8]) -> Vec<u8> {
    let name = part.split(|&b| b == b'=').next().unwrap_or_default();
    let name = name
        .strip_prefix(b"+")
        .or_else(|| name.strip_prefix(b"-"))
        .unwrap_or(name);
    name.iter()
        .map(|&b| if b == b'_' { b'-' } else { b })
        .collect()
}

/// How often each property we inject is set in a `-cpu` value (`kvm`, `hv-vendor-id`).
pub fn count_injected_props(value: &[u8]) -> (usize, usize) {
    let mut counts = (0, 0);
    for part in split_props(value).into_iter().skip(1) {
        match cpu_prop_name(part).as_slice() {
            b"kvm" => counts.0 += 1,
            b"hv-vendor-id" => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

/// The new `-cpu` value, or `None` when it stays as it is.
///
/// `kvm=off` (if [`Injection::hide_kvm`]) and `hv-vendor-id=ID` go right after the model
/// name, each only if the value does not set that property already. `help`, `?`, and a
/// value without a model name are left alone.
pub fn rewrite_cpu_value(value: &[u8], injection: &Injection<'_>) -> Option<Vec<u8>> {
    let model = split_props(value)[0];
    if model.is_empty() || model == b"help" || model == b"?" {
        return None;
    }
    let (kvm, vendor) = count_injected_props(value);
    let mut insert = Vec::new();
    if injection.hide_kvm && kvm == 0 {
        insert.extend_from_slice(b",kvm=off");
    }
    if vendor == 0 {
        insert.extend_from_slice(b",hv-vendor-id=");
        insert.extend_from_slice(injection.hv_vendor_id.as_bytes());
    }
    if insert.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(value.len() + insert.len());
    out.extend_from_slice(model);
    out.extend_from_slice(&insert);
    out.extend_from_slice(&value[model.len()..]);
    Some(out)
}

/// One `-cpu` value that [`rewrite_argv`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuRewrite {
    pub index: usize,
    pub old: OsString,
    pub new: OsString,
}

/// Rewrite every `-cpu` value of `argv` in place; returns what changed.
pub fn rewrite_argv(argv: &mut [OsString], injection: &Injection<'_>) -> Vec<CpuRewrite> {
    let mut changed = Vec::new();
    for index in cpu_value_indices(argv) {
        if let Some(new) = rewrite_cpu_value(argv[index].as_bytes(), injection) {
            let new = OsString::from_vec(new);
            let old = std::mem::replace(&mut argv[index], new.clone());
            changed.push(CpuRewrite { index, old, new });
        }
    }
    changed
}

/// A vfio-pci device on the command line: the host function it passes through, when
/// the command line names one we can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioDevice {
    pub host: Result<PciAddress, String>,
}

/// QEMU device types that pass a host PCI function through.
const VFIO_DRIVERS: &[&str] = &["vfio-pci", "vfio-pci-nohotplug"];

/// Every vfio-pci `-device` of `argv`, in the legacy `vfio-pci,host=...` form and the
/// JSON `{"driver":"vfio-pci","host":...}` form that libvirt uses since 7.x.
pub fn vfio_devices(argv: &[OsString]) -> Vec<VfioDevice> {
    options_with_argument(argv)
        .into_iter()
        .filter(|o| o.name == b"device")
        .filter_map(|o| parse_vfio_device(&argv[o.value_index]))
        .collect()
}

#[derive(serde::Deserialize)]
struct JsonDevice {
    driver: String,
    host: Option<String>,
    sysfsdev: Option<String>,
}

/// The device, if `value` (one `-device` argument) is a vfio-pci one.
pub fn parse_vfio_device(value: &OsStr) -> Option<VfioDevice> {
    let bytes = value.as_bytes();
    let (driver, host, sysfsdev) = if bytes.first() == Some(&b'{') {
        let dev: JsonDevice = serde_json::from_slice(bytes).ok()?;
        (dev.driver, dev.host, dev.sysfsdev)
    } else {
        let (mut driver, mut host, mut sysfsdev) = (None, None, None);
        for (i, part) in split_opts(bytes).into_iter().enumerate() {
            let part = String::from_utf8_lossy(part).replace(",,", ",");
            match part.split_once('=') {
                Some(("driver", v)) => driver = Some(v.to_owned()),
                Some(("host", v)) => host = Some(v.to_owned()),
                Some(("sysfsdev", v)) => sysfsdev = Some(v.to_owned()),
                None if i == 0 => driver = Some(part),
                _ => {}
            }
        }
        (driver?, host, sysfsdev)
    };
    if !VFIO_DRIVERS.contains(&driver.as_str()) {
        return None;
    }
    let host = match (host, sysfsdev) {
        (Some(host), _) => host.parse().map_err(|e| format!("{e}")),
        (None, Some(path)) => {
            let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            name.parse()
                .map_err(|_| format!("sysfsdev={path:?} does not name a PCI function"))
        }
        (None, None) => Err("the device names no host= or sysfsdev=".to_owned()),
    };
    Some(VfioDevice { host })
}

/// Why the wrapper rewrites this VM's `-cpu` under `apply_to`, or `None` when it does not.
///
/// With [`ApplyTo::Vga`] and [`ApplyTo::Gpu`] the host function of each vfio-pci device
/// is looked up in `sysfs`: a VGA controller (class 0x0300xx), or for `gpu` any display
/// controller (0x03xxxx), makes the VM one to change. A function whose class cannot be
/// read counts as one: a wrongly hidden KVM costs a VM its kvmclock, a wrongly visible
/// one costs a GPU VM its driver. The reason says so.
pub fn reason_to_apply(apply_to: ApplyTo, argv: &[OsString], sysfs: &Path) -> Option<String> {
    match apply_to {
        ApplyTo::None => None,
        ApplyTo::All => Some("apply_to = \"all\"".to_owned()),
        ApplyTo::Vfio => vfio_devices(argv)
            .into_iter()
            .next()
            .map(|dev| match dev.host {
                Ok(addr) => format!("vfio-pci device {addr}"),
                Err(_) => "a vfio-pci device".to_owned(),
            }),
        ApplyTo::Vga | ApplyTo::Gpu => {
            let (wanted, what): (fn(u32) -> bool, &str) = if apply_to == ApplyTo::Vga {
                (|class| class >> 8 == 0x0300, "a VGA controller")
            } else {
                (
                    |class| pci::base_class(class) == pci::CLASS_DISPLAY,
                    "a display controller",
                )
            };
            let mut unsure = None;
            for dev in vfio_devices(argv) {
                let addr = match dev.host {
                    Ok(addr) => addr,
                    Err(why) => {
                        unsure.get_or_insert(format!("vfio-pci device counted as a GPU: {why}"));
                        continue;
                    }
                };
                match pci::read_class(sysfs, &addr) {
                    Ok(class) if wanted(class) => {
                        return Some(format!("vfio-pci {addr} is {what} (class 0x{class:06x})"));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        // The error names the file.
                        unsure.get_or_insert(format!(
                            "vfio-pci {addr} counted as a GPU: cannot read its class: {err}"
                        ));
                    }
                }
            }
            unsure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJ: Injection<'static> = Injection {
        hide_kvm: true,
        hv_vendor_id: "MyFake_KVM",
    };

    fn rw(value: &str, inj: &Injection<'_>) -> Option<String> {
        rewrite_cpu_value(value.as_bytes(), inj).map(|v| String::from_utf8(v).expect("utf-8"))
    }

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn inserts_right_after_the_model() {
        assert_eq!(
            rw("host,migratable=on", &INJ).as_deref(),
            Some("host,kvm=off,hv-vendor-id=MyFake_KVM,migratable=on")
        );
        assert_eq!(
            rw("Skylake-Server-IBRS", &INJ).as_deref(),
            Some("Skylake-Server-IBRS,kvm=off,hv-vendor-id=MyFake_KVM")
        );
    }

    #[test]
    fn an_explicit_setting_wins_in_either_spelling() {
        assert_eq!(
            rw("host,kvm=on", &INJ).as_deref(),
            Some("host,hv-vendor-id=MyFake_KVM,kvm=on")
        );
        assert_eq!(rw("host,-kvm,hv_vendor_id=abc", &INJ), None);
        assert_eq!(rw("host,+kvm,hv-vendor-id=abc", &INJ), None);
        assert_eq!(
            rw("host,hv_vendor_id=abc", &INJ).as_deref(),
            Some("host,kvm=off,hv_vendor_id=abc")
        );
        assert_eq!(rw("host,kvm=off,hv-vendor-id=x", &INJ), None);
    }

    #[test]
    fn hide_kvm_false_injects_only_the_vendor_id() {
        let inj = Injection {
            hide_kvm: false,
            ..INJ
        };
        assert_eq!(
            rw("host", &inj).as_deref(),
            Some("host,hv-vendor-id=MyFake_KVM")
        );
        assert_eq!(rw("host,hv-vendor-id=x", &inj), None);
    }

    #[test]
    fn help_and_empty_models_are_left_alone() {
        assert_eq!(rw("help", &INJ), None);
        assert_eq!(rw("?", &INJ), None);
        assert_eq!(rw("", &INJ), None);
        assert_eq!(rw(",kvm=on", &INJ), None);
    }

    #[test]
    fn every_comma_separates_as_in_qemus_parser() {
        // QEMU reads "model-id=a,,kvm=on" as model-id=a and kvm=on: kvm is set.
        assert_eq!(
            rw("host,model-id=a,,kvm=on", &INJ).as_deref(),
            Some("host,hv-vendor-id=MyFake_KVM,model-id=a,,kvm=on")
        );
        // The model ends at the first comma, whatever follows.
        assert_eq!(
            rw("max,,kvm=on,", &INJ).as_deref(),
            Some("max,hv-vendor-id=MyFake_KVM,,kvm=on,")
        );
        assert_eq!(split_props(b"a,,b,c"), vec![&b"a"[..], b"", b"b", b"c"]);
        assert_eq!(split_props(b""), vec![&b""[..]]);
    }

    #[test]
    fn finds_cpu_values_the_way_qemu_reads_options() {
        let argv = args(&[
            "qemu",
            "-name",
            "-cpu",
            "-S",
            "-cpu",
            "host",
            "disk.img",
            "--cpu",
            "max",
            "-no-user-config",
            "-cpu",
        ]);
        // "-name -cpu": the second word is the guest's name, not an option.
        // The final "-cpu" has no value: QEMU will reject it, we leave it.
        assert_eq!(cpu_value_indices(&argv), vec![5, 8]);
    }

    #[test]
    fn rewrites_every_cpu_option_and_nothing_else() {
        let mut argv = args(&[
            "/usr/libexec/qemu-kvm",
            "-S",
            "-cpu",
            "host",
            "-device",
            "host",
            "-cpu",
            "EPYC,kvm=on",
        ]);
        let changed = rewrite_argv(&mut argv, &INJ);
        assert_eq!(changed.len(), 2);
        assert_eq!(
            argv,
            args(&[
                "/usr/libexec/qemu-kvm",
                "-S",
                "-cpu",
                "host,kvm=off,hv-vendor-id=MyFake_KVM",
                "-device",
                "host",
                "-cpu",
                "EPYC,hv-vendor-id=MyFake_KVM,kvm=on",
            ])
        );
    }

    /// A sysfs with these (address, class) functions; `None`: a class that is not hex.
    fn sysfs_with(functions: &[(&str, Option<u32>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (address, class) in functions {
            let f = dir.path().join("bus/pci/devices").join(address);
            std::fs::create_dir_all(&f).expect("mkdir");
            let text = class.map_or("garbage\n".to_owned(), |c| format!("0x{c:06x}\n"));
            std::fs::write(f.join("class"), text).expect("write class");
        }
        dir
    }

    #[test]
    fn apply_to_decides_by_the_host_functions_class() {
        let sysfs = sysfs_with(&[
            ("0000:18:00.0", Some(0x030000)), // VGA
            ("0000:3b:00.0", Some(0x030200)), // 3D controller
            ("0000:5e:00.0", Some(0x020000)), // NIC
            ("0000:af:00.0", None),
        ]);
        let vm = |hosts: &[&str]| -> Vec<OsString> {
            let mut a = vec![OsString::from("qemu")];
            for h in hosts {
                a.push("-device".into());
                a.push(format!("vfio-pci,host={h}").into());
            }
            a
        };
        let why = |apply: ApplyTo, hosts: &[&str]| reason_to_apply(apply, &vm(hosts), sysfs.path());
        assert_eq!(why(ApplyTo::None, &["0000:18:00.0"]), None);
        assert_eq!(
            why(ApplyTo::All, &[]).as_deref(),
            Some("apply_to = \"all\"")
        );
        assert_eq!(why(ApplyTo::Vfio, &[]), None);
        assert_eq!(
            why(ApplyTo::Vfio, &["0000:5e:00.0"]).as_deref(),
            Some("vfio-pci device 0000:5e:00.0")
        );
        assert_eq!(
            why(ApplyTo::Vga, &["0000:5e:00.0", "0000:18:00.0"]).as_deref(),
            Some("vfio-pci 0000:18:00.0 is a VGA controller (class 0x030000)")
        );
        assert_eq!(why(ApplyTo::Vga, &["0000:3b:00.0", "0000:5e:00.0"]), None);
        assert_eq!(
            why(ApplyTo::Gpu, &["0000:5e:00.0", "0000:3b:00.0"]).as_deref(),
            Some("vfio-pci 0000:3b:00.0 is a display controller (class 0x030200)")
        );
        assert_eq!(why(ApplyTo::Gpu, &["0000:5e:00.0"]), None);
        assert_eq!(why(ApplyTo::Vga, &[]), None);
        // A class that cannot be read counts, and says which file; a sure answer wins.
        let unsure = why(ApplyTo::Vga, &["0000:af:00.0"]).expect("counted as a GPU");
        assert!(
            unsure.starts_with("vfio-pci 0000:af:00.0 counted as a GPU: cannot read its class: ")
                && unsure.contains("0000:af:00.0/class"),
            "{unsure}"
        );
        assert_eq!(
            why(ApplyTo::Gpu, &["0000:af:00.0", "0000:3b:00.0"]).as_deref(),
            Some("vfio-pci 0000:3b:00.0 is a display controller (class 0x030200)")
        );
        let no_host = reason_to_apply(
            ApplyTo::Vga,
            &args(&["qemu", "-device", "vfio-pci,id=x"]),
            sysfs.path(),
        );
        assert_eq!(
            no_host.as_deref(),
            Some("vfio-pci device counted as a GPU: the device names no host= or sysfsdev=")
        );
    }

    #[test]
    fn only_the_first_legacy_part_without_a_key_is_the_driver() {
        assert!(
            parse_vfio_device(OsStr::new("virtio-net-pci,vfio-pci,host=0000:18:00.0")).is_none()
        );
        assert!(parse_vfio_device(OsStr::new("vfio-pci,x,host=0000:18:00.0")).is_some());
    }

    #[test]
    fn the_legacy_device_form_reads_double_commas_as_qemuopts_does() {
        // QemuOpts (-device driver,key=value) escapes a comma as ",,": "id=a,,host=..."
        // is an id holding a comma, and the host is the one after it.
        let hosts = |value: &str| -> Vec<Result<String, String>> {
            vfio_devices(&args(&["qemu", "-device", value]))
                .into_iter()
                .map(|d| d.host.map(|a| a.to_string()))
                .collect()
        };
        assert_eq!(
            hosts("vfio-pci,id=a,,host=0000:3b:00.0,host=0000:18:00.0"),
            vec![Ok("0000:18:00.0".to_owned())]
        );
        assert_eq!(
            hosts("vfio-pci,romfile=/roms/a,,,,b.rom,host=0000:af:00.0"),
            vec![Ok("0000:af:00.0".to_owned())]
        );
        assert_eq!(
            hosts("vfio-pci,,x,host=0000:18:00.0"),
            vec![],
            "the driver is \"vfio-pci,x\": not a vfio-pci device"
        );
        assert_eq!(split_opts(b"a,,b,c,,,d"), vec![&b"a,,b"[..], b"c,,", b"d"]);
    }

    #[test]
    fn reads_vfio_devices_in_both_forms() {
        let argv = args(&[
            "qemu",
            "-device",
            "vfio-pci,host=0000:18:00.0,id=hostdev0,bus=pci.0,addr=0x5",
            "-device",
            "driver=vfio-pci,host=3b:00.1",
            "-device",
            r#"{"driver":"vfio-pci","host":"0000:af:00.0","id":"hostdev1","bus":"pci.0","addr":"0x6"}"#,
            "-device",
            r#"{"driver":"virtio-net-pci","netdev":"hostnet0"}"#,
            "-device",
            "virtio-blk-pci,drive=x,host=0000:01:00.0",
            "-device",
            "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:5e:00.0/",
            "-device",
            "vfio-pci,host=nonsense",
            "-device",
            "vfio-pci,id=hostdev9",
        ]);
        let hosts: Vec<_> = vfio_devices(&argv)
            .into_iter()
            .map(|d| d.host.map(|a| a.to_string()))
            .collect();
        assert_eq!(hosts.len(), 6);
        assert_eq!(hosts[0].as_deref(), Ok("0000:18:00.0"));
        assert_eq!(hosts[1].as_deref(), Ok("0000:3b:00.1"));
        assert_eq!(hosts[2].as_deref(), Ok("0000:af:00.0"));
        assert_eq!(hosts[3].as_deref(), Ok("0000:5e:00.0"));
        assert!(hosts[4].as_ref().is_err_and(|e| e.contains("nonsense")));
        assert!(hosts[5].as_ref().is_err_and(|e| e.contains("no host=")));
    }
}
