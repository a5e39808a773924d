//! The suite's one configuration file, `/etc/gpu-passthrough/config.toml`.
//!
//! Two ways to read it, one parser:
//! - [`parse`] is lenient. Every key that is valid is applied, every key that is not
//!   falls back to its default and is reported as a [`Problem`]. The wrapper uses this:
//!   its own configuration must never stop a VM from starting.
//! - [`load`] is strict: any problem is an error naming the file, the line and the key.
//!   The hook and the installer use this.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// The configuration file the package and the installer put in place: every key
/// commented out at its default.
pub const DEFAULT_FILE: &str = include_str!("../../rpm/config.toml");

/// Where the configuration lives on a host.
pub const DEFAULT_PATH: &str = "/etc/gpu-passthrough/config.toml";
/// Environment variable that replaces [`DEFAULT_PATH`] (tests, unusual hosts).
pub const PATH_ENV: &str = "GPU_PASSTHROUGH_CONFIG";

/// The configuration path in force: `$GPU_PASSTHROUGH_CONFIG`, else [`DEFAULT_PATH`].
pub fn path_from_env() -> PathBuf {
    crate::env_path(PATH_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub wrapper: WrapperConfig,
    pub hook: HookConfig,
    pub metrics: MetricsConfig,
    pub bookings: BookingsConfig,
}

/// `[bookings]`: whether a GPU start needs a booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingsConfig {
    pub mode: BookingsMode,
    /// The bookings file.
    pub file: PathBuf,
    /// A booking with a `user` covers only that user's VMs.
    pub match_user: bool,
}

/// Where the bookings file lives by default.
pub const DEFAULT_BOOKINGS_FILE: &str = "/etc/gpu-passthrough/bookings.json";

impl Default for BookingsConfig {
    fn default() -> Self {
        BookingsConfig {
            mode: BookingsMode::Off,
            file: PathBuf::from(DEFAULT_BOOKINGS_FILE),
            match_user: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingsMode {
    /// Bookings are not looked at.
    Off,
    /// A start without a booking is logged, and starts.
    Warn,
    /// A start without a booking is refused.
    Enforce,
}

impl BookingsMode {
    const NAMES: [(&'static str, BookingsMode); 3] = [
        ("off", BookingsMode::Off),
        ("warn", BookingsMode::Warn),
        ("enforce", BookingsMode::Enforce),
    ];
}

/// `[metrics]`: where `gpu-passthrough metrics` writes for node_exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// node_exporter's textfile collector directory.
    pub textfile_dir: PathBuf,
}

/// node_exporter's textfile directory on EL (the prometheus-node-exporter package).
pub const DEFAULT_TEXTFILE_DIR: &str = "/var/lib/node_exporter/textfile_collector";

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            textfile_dir: PathBuf::from(DEFAULT_TEXTFILE_DIR),
        }
    }
}

/// `[wrapper]`: what qemu-kvm-wrapper does to each `-cpu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperConfig {
    /// The real qemu, which the wrapper executes.
    pub target: PathBuf,
    pub hv_vendor_id: HvVendorId,
    /// Inject `kvm=off`, which hides the KVM CPUID signature from the guest.
    pub hide_kvm: bool,
    pub apply_to: ApplyTo,
}

/// Where the real qemu lives once `gpu-passthrough divert` has run.
pub const DEFAULT_TARGET: &str = "/usr/libexec/qemu-kvm.orig";

impl Default for WrapperConfig {
    fn default() -> Self {
        WrapperConfig {
            target: PathBuf::from(DEFAULT_TARGET),
            hv_vendor_id: HvVendorId::default(),
            hide_kvm: true,
            apply_to: ApplyTo::Vga,
        }
    }
}

/// The Hyper-V vendor id that the guest sees: 1 to 12 printable ASCII characters, no
/// comma (QEMU would read a comma as the start of the next property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvVendorId(String);

impl HvVendorId {
    /// The longest id QEMU accepts: CPUID returns it in three 4-byte registers.
    pub const MAX_LEN: usize = 12;

    pub fn new(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(format!(
                "must be 1 to {} characters long, {:?} has {}",
                Self::MAX_LEN,
                id,
                id.chars().count()
            ));
        }
        if let Some(bad) = id.chars().find(|c| !(' '..='~').contains(c) || *c == ',') {
            return Err(format!(
                "must be printable ASCII without a comma, {id:?} contains {bad:?}"
            ));
        }
        Ok(HvVendorId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for HvVendorId {
    fn default() -> Self {
        HvVendorId("MyFake_KVM".to_owned())
    }
}

impl fmt::Display for HvVendorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which VMs the wrapper changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// VMs with a vfio-pci device whose host function is VGA-class (0x0300xx): the
    /// GeForce, TITAN and workstation cards whose older drivers refused a VM. The
    /// default: datacenter GPUs (3D controllers, 0x0302) never refused, and hiding KVM
    /// costs the guest kvmclock and the other paravirtual features.
    Vga,
    /// VMs with a vfio-pci device whose host function is a display controller.
    Gpu,
    /// VMs with any vfio-pci device.
    Vfio,
    /// Every VM.
    All,
    /// No VM: the wrapper only executes the real qemu.
    None,
}

impl ApplyTo {
    const NAMES: [(&'static str, ApplyTo); 5] = [
        ("vga", ApplyTo::Vga),
        ("gpu", ApplyTo::Gpu),
        ("vfio", ApplyTo::Vfio),
        ("all", ApplyTo::All),
        ("none", ApplyTo::None),
    ];
}

/// `[hook]`: what gpu-passthrough-hook does at `prepare begin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    pub mode: HookMode,
    /// Memory the host keeps for itself; VMs with host devices pin all of theirs.
    pub reserved_host_memory_mib: u64,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            mode: HookMode::Enforce,
            reserved_host_memory_mib: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMode {
    /// Refuse starts that cannot work.
    Enforce,
    /// Log what is wrong, start anyway.
    Warn,
    /// Do nothing.
    Off,
}

impl HookMode {
    const NAMES: [(&'static str, HookMode); 3] = [
        ("enforce", HookMode::Enforce),
        ("warn", HookMode::Warn),
        ("off", HookMode::Off),
    ];
}

/// One thing wrong with the file: not TOML at all, or one key with a bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending text.
    pub line: usize,
    /// A section or key this version does not know (a file written for a newer
    /// version, or left after a downgrade): a warning, never a reason to refuse.
    pub unknown: bool,
    /// `section.key` where the problem is one key's.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`parse`] makes of a file: the configuration to use and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub config: Config,
    pub problems: Vec<Problem>,
}

/// Parse the configuration leniently: a bad key keeps its default and becomes a
/// [`Problem`]; a file that is not TOML gives all defaults and one problem.
pub fn parse(text: &str) -> Parsed {
    let mut config = Config::default();
    let mut problems = Vec::new();
    let lines = LineIndex(text);
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(err) => {
            let line = err.span().map_or(1, |span| lines.line_of(span.start));
            problems.push(Problem {
                line,
                unknown: false,
                key: None,
                message: format!("not valid TOML: {}", err.message().trim_end()),
            });
            return Parsed { config, problems };
        }
    };
    for (name, section) in document.get_ref().iter() {
        let line = lines.line_of(name.span().start);
        let Some(table) = section.get_ref().as_table() else {
            problems.push(Problem {
                line,
                unknown: true,
                key: Some(name.get_ref().to_string()),
                message: "unknown top-level key, ignored; this version knows [wrapper], [hook], [metrics] and [bookings]"
                    .into(),
            });
            continue;
        };
        let mut section = Section {
            name: name.get_ref(),
            lines: &lines,
            problems: &mut problems,
        };
        match name.get_ref().as_ref() {
            "wrapper" => section.wrapper(table, &mut config.wrapper),
            "hook" => section.hook(table, &mut config.hook),
            "metrics" => section.metrics(table, &mut config.metrics),
            "bookings" => section.bookings(table, &mut config.bookings),
            _ => section.problems.push(Problem {
                line,
                unknown: true,
                key: Some(name.get_ref().to_string()),
                message:
                    "unknown section, ignored; this version knows [wrapper], [hook], [metrics] and [bookings]"
                        .into(),
            }),
        }
    }
    Parsed { config, problems }
}

/// One section being applied to its part of [`Config`].
struct Section<'a> {
    name: &'a str,
    lines: &'a LineIndex<'a>,
    problems: &'a mut Vec<Problem>,
}

type Entry<'a, 'i> = (
    &'a toml::Spanned<toml::de::DeString<'i>>,
    &'a toml::Spanned<DeValue<'i>>,
);

impl Section<'_> {
    fn wrapper(&mut self, table: &DeTable<'_>, out: &mut WrapperConfig) {
        for entry in table.iter() {
            match entry.0.get_ref().as_ref() {
                "target" => self.apply(entry, &mut out.target, |v| {
                    let path = v
                        .as_str()
                        .ok_or("expected a string: the real qemu's path")?;
                    if !path.starts_with('/') {
                        return Err(format!("must be an absolute path, got {path:?}"));
                    }
                    Ok(PathBuf::from(path))
                }),
                "hv_vendor_id" => self.apply(entry, &mut out.hv_vendor_id, |v| {
                    HvVendorId::new(
                        v.as_str()
                            .ok_or("expected a string such as \"MyFake_KVM\"")?,
                    )
                }),
                "hide_kvm" => self.apply(entry, &mut out.hide_kvm, |v| {
                    v.as_bool().ok_or_else(|| "expected true or false".into())
                }),
                "apply_to" => self.apply(entry, &mut out.apply_to, |v| one_of(v, &ApplyTo::NAMES)),
                _ => self.unknown(entry, "target, hv_vendor_id, hide_kvm, apply_to"),
            }
        }
    }

    fn hook(&mut self, table: &DeTable<'_>, out: &mut HookConfig) {
        for entry in table.iter() {
            match entry.0.get_ref().as_ref() {
                "mode" => self.apply(entry, &mut out.mode, |v| one_of(v, &HookMode::NAMES)),
                "reserved_host_memory_mib" => {
                    self.apply(entry, &mut out.reserved_host_memory_mib, |v| {
                        let int = v
                            .as_integer()
                            .ok_or("expected a whole number of MiB, such as 4096")?;
                        let digits = int.as_str().replace('_', "");
                        u64::from_str_radix(digits.trim_start_matches('+'), int.radix())
                            .map_err(|_| format!("expected a number of MiB >= 0, got {int}"))
                    })
                }
                _ => self.unknown(entry, "mode, reserved_host_memory_mib"),
            }
        }
    }

    fn bookings(&mut self, table: &DeTable<'_>, out: &mut BookingsConfig) {
        for entry in table.iter() {
            match entry.0.get_ref().as_ref() {
                "mode" => self.apply(entry, &mut out.mode, |v| one_of(v, &BookingsMode::NAMES)),
                "file" => self.apply(entry, &mut out.file, |v| {
                    let path = v.as_str().ok_or("expected a string: the bookings file")?;
                    if !path.starts_with('/') {
                        return Err(format!("must be an absolute path, got {path:?}"));
                    }
                    Ok(PathBuf::from(path))
                }),
                "match_user" => self.apply(entry, &mut out.match_user, |v| {
                    v.as_bool().ok_or_else(|| "expected true or false".into())
                }),
                _ => self.unknown(entry, "mode, file, match_user"),
            }
        }
    }

    fn metrics(&mut self, table: &DeTable<'_>, out: &mut MetricsConfig) {
        for entry in table.iter() {
            match entry.0.get_ref().as_ref() {
                "textfile_dir" => self.apply(entry, &mut out.textfile_dir, |v| {
                    let path = v
                        .as_str()
                        .ok_or("expected a string: node_exporter's textfile directory")?;
                    if !path.starts_with('/') {
                        return Err(format!("must be an absolute path, got {path:?}"));
                    }
                    Ok(PathBuf::from(path))
                }),
                _ => self.unknown(entry, "textfile_dir"),
            }
        }
    }

    /// Set `slot` from the entry's value, or keep the default and record why not.
    fn apply<T>(
        &mut self,
        (key, value): Entry<'_, '_>,
        slot: &mut T,
        convert: impl FnOnce(&DeValue<'_>) -> Result<T, String>,
    ) {
        match convert(value.get_ref()) {
            Ok(v) => *slot = v,
            Err(message) => self.problems.push(Problem {
                line: self.lines.line_of(value.span().start),
                unknown: false,
                key: Some(format!("{}.{}", self.name, key.get_ref())),
                message,
            }),
        }
    }

    fn unknown(&mut self, (key, _): Entry<'_, '_>, known: &str) {
        self.problems.push(Problem {
            line: self.lines.line_of(key.span().start),
            unknown: true,
            key: Some(format!("{}.{}", self.name, key.get_ref())),
            message: format!(
                "unknown key, ignored; [{}] has {known} in this version",
                self.name
            ),
        });
    }
}

fn one_of<T: Copy>(value: &DeValue<'_>, names: &[(&str, T)]) -> Result<T, String> {
    let choices = || {
        names
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let s = value
        .as_str()
        .ok_or_else(|| format!("expected one of {}", choices()))?;
    names
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("expected one of {}, got {s:?}", choices()))
}

/// Byte offsets to 1-based line numbers.
struct LineIndex<'a>(&'a str);

impl LineIndex<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        1 + self.0.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
}

/// Read the configuration file's text. `Ok(None)` when there is no file: that means
/// the defaults.
pub fn read_text(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Why [`load`] refused a configuration file.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(
                        f,
                        " (check its mode and owner; its SELinux label is not the cause on \
                         EL8-EL10, where every domain reads etc_t files: chmod 0644 {})",
                        path.display()
                    )?;
                }
                Ok(())
            }
            LoadError::Invalid { path, problems } => {
                write!(f, "{}: ", path.display())?;
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Read { source, .. } => Some(source),
            LoadError::Invalid { .. } => None,
        }
    }
}

/// A configuration that [`load`] accepted, with what it ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    /// Unknown sections and keys, as `PATH: line N: key: ...`: for a warning.
    pub warnings: Vec<String>,
}

/// Read the configuration strictly: a missing file means defaults; a bad value of a
/// known key, or a file that is not TOML, is an error. A section or key this version
/// does not know is a warning (a file written for a newer version must not stop VMs).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = read_text(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let Some(text) = text else {
        return Ok(Loaded {
            config: Config::default(),
            warnings: Vec::new(),
        });
    };
    let Parsed { config, problems } = parse(&text);
    let (unknown, errors): (Vec<Problem>, Vec<Problem>) =
        problems.into_iter().partition(|p| p.unknown);
    if errors.is_empty() {
        Ok(Loaded {
            config,
            warnings: unknown
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        })
    } else {
        Err(LoadError::Invalid {
            path: path.to_owned(),
            problems: errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let parsed = parse("");
        assert_eq!(parsed.config, Config::default());
        assert!(parsed.problems.is_empty());
        assert_eq!(parsed.config.wrapper.target, Path::new(DEFAULT_TARGET));
        assert_eq!(parsed.config.wrapper.apply_to, ApplyTo::Vga);
        assert_eq!(parsed.config.hook.reserved_host_memory_mib, 4096);
    }

    #[test]
    fn the_shipped_file_is_valid_and_documents_every_default() {
        let parsed = parse(DEFAULT_FILE);
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(parsed.config, Config::default());
        // Uncommenting every key gives the defaults too: the comments are right.
        let uncommented = DEFAULT_FILE
            .replace("\n#target", "\ntarget")
            .replace("\n#hv_vendor_id", "\nhv_vendor_id")
            .replace("\n#hide_kvm", "\nhide_kvm")
            .replace("\n#apply_to", "\napply_to")
            .replace("\n#mode", "\nmode")
            .replace("\n#reserved_host_memory_mib", "\nreserved_host_memory_mib")
            .replace("\n#textfile_dir", "\ntextfile_dir")
            .replace("\n#file", "\nfile")
            .replace("\n#match_user", "\nmatch_user");
        let parsed = parse(&uncommented);
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(parsed.config, Config::default());
        assert_eq!(
            uncommented
                .lines()
                .filter(|l| l.contains(" = ") && !l.starts_with('#'))
                .count(),
            10
        );
    }

    #[test]
    fn every_key_is_read() {
        let parsed = parse(
            r#"
[wrapper]
target = "/usr/bin/qemu-system-x86_64"
hv_vendor_id = "0123456789ab"
hide_kvm = false
apply_to = "vfio"

[hook]
mode = "warn"
reserved_host_memory_mib = 8_192

[bookings]
mode = "enforce"
file = "/srv/calendar/bookings.json"
match_user = true

[metrics]
textfile_dir = "/run/node_exporter"
"#,
        );
        assert_eq!(parsed.problems, vec![]);
        let c = parsed.config;
        assert_eq!(
            c.bookings,
            BookingsConfig {
                mode: BookingsMode::Enforce,
                file: PathBuf::from("/srv/calendar/bookings.json"),
                match_user: true
            }
        );
        assert_eq!(c.metrics.textfile_dir, Path::new("/run/node_exporter"));
        assert_eq!(c.wrapper.hv_vendor_id.to_string(), "0123456789ab");
        assert_eq!(c.wrapper.target, Path::new("/usr/bin/qemu-system-x86_64"));
        assert_eq!(c.wrapper.hv_vendor_id.as_str(), "0123456789ab");
        assert!(!c.wrapper.hide_kvm);
        assert_eq!(c.wrapper.apply_to, ApplyTo::Vfio);
        assert_eq!(c.hook.mode, HookMode::Warn);
        assert_eq!(c.hook.reserved_host_memory_mib, 8192);
    }

    #[test]
    fn a_bad_value_keeps_its_default_and_names_line_and_key() {
        let parsed = parse("[wrapper]\nhide_kvm = false\nhv_vendor_id = \"way_too_long_id\"\n");
        assert!(
            !parsed.config.wrapper.hide_kvm,
            "the good key still applies"
        );
        assert_eq!(parsed.config.wrapper.hv_vendor_id, HvVendorId::default());
        assert_eq!(parsed.problems.len(), 1);
        let text = parsed.problems[0].to_string();
        assert!(text.starts_with("line 3: wrapper.hv_vendor_id: "), "{text}");
        assert!(text.contains("1 to 12"), "{text}");
    }

    #[test]
    fn vendor_id_rules() {
        assert!(HvVendorId::new("a").is_ok());
        assert!(HvVendorId::new("123456789012").is_ok());
        assert!(HvVendorId::new("with space").is_ok());
        assert!(HvVendorId::new("").is_err());
        assert!(HvVendorId::new("1234567890123").is_err());
        assert!(HvVendorId::new("a,b").is_err());
        assert!(HvVendorId::new("tab\there").is_err());
        assert!(HvVendorId::new("é").is_err());
    }

    #[test]
    fn broken_toml_gives_defaults_and_one_problem_with_its_line() {
        let parsed = parse("[wrapper]\nhide_kvm = false\ntarget = \"/x\n");
        assert_eq!(parsed.config, Config::default());
        assert_eq!(parsed.problems.len(), 1);
        assert_eq!(parsed.problems[0].line, 3);
        assert!(parsed.problems[0].message.starts_with("not valid TOML"));
    }

    #[test]
    fn unknown_keys_sections_and_wrong_types_are_problems() {
        let parsed = parse(
            "top = 1\n[wrapper]\nhv_vendorid = \"x\"\nhide_kvm = \"yes\"\napply_to = \"GPU\"\ntarget = \"qemu\"\n[hook]\nreserved_host_memory_mib = -1\nmode = 3\n[other]\n",
        );
        let mut keys: Vec<_> = parsed
            .problems
            .iter()
            .map(|p| {
                (
                    p.key.clone().expect("every problem here is a key's"),
                    p.line,
                )
            })
            .collect();
        keys.sort();
        let expected = [
            ("hook.mode", 9),
            ("hook.reserved_host_memory_mib", 8),
            ("other", 10),
            ("top", 1),
            ("wrapper.apply_to", 5),
            ("wrapper.hide_kvm", 4),
            ("wrapper.hv_vendorid", 3),
            ("wrapper.target", 6),
        ];
        let expected: Vec<_> = expected.iter().map(|(k, l)| (k.to_string(), *l)).collect();
        assert_eq!(keys, expected);
        assert_eq!(parsed.config, Config::default());
    }

    #[test]
    fn load_is_strict_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        assert_eq!(load(&path).expect("missing file").config, Config::default());
        std::fs::write(&path, "[hook]\nmode = \"loud\"\n").expect("write");
        let err = load(&path).expect_err("bad mode");
        assert!(std::error::Error::source(&err).is_none());
        let err = err.to_string();
        assert!(
            err.contains("config.toml: line 2: hook.mode: expected one of"),
            "{err}"
        );
        // Two problems, in order, one "; " between them.
        std::fs::write(
            &path,
            "[hook]\nmode = \"loud\"\nreserved_host_memory_mib = -1\n",
        )
        .expect("write");
        let err = load(&path).expect_err("two bad values").to_string();
        let (first, second) = err.split_once("; ").expect("two problems");
        assert!(
            first.starts_with(&format!("{}: line 2: hook.mode: ", path.display())),
            "{err}"
        );
        assert!(
            second.starts_with("line 3: hook.reserved_host_memory_mib"),
            "{err}"
        );
        assert!(!second.contains("; "), "{err}");
        // A directory where the file should be: a read error, its cause kept, and no
        // hint about permissions (that is for EACCES only).
        let err = load(dir.path()).expect_err("a directory");
        assert!(std::error::Error::source(&err).is_some());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot read {}: ", dir.path().display())),
            "{text}"
        );
        assert!(!text.contains("check its mode"), "{text}");
        assert_eq!(
            read_text(dir.path()).map_err(|e| e.kind()),
            Err(io::ErrorKind::IsADirectory)
        );
    }

    #[test]
    fn the_path_in_force_is_the_variable_or_the_default() {
        // Only this test touches the variable in this test binary.
        std::env::remove_var(PATH_ENV);
        assert_eq!(path_from_env(), Path::new(DEFAULT_PATH));
    }

    #[test]
    fn load_warns_about_what_a_newer_version_wrote_and_applies_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[hook]\nmode = \"warn\"\nfuture_knob = 1\n[telemetry]\nurl = \"x\"\n",
        )
        .expect("write");
        let loaded = load(&path).expect("unknown keys are no error");
        assert_eq!(loaded.config.hook.mode, HookMode::Warn);
        let shown = format!("{}", path.display());
        assert_eq!(
            loaded.warnings,
            vec![
                format!("{shown}: line 3: hook.future_knob: unknown key, ignored; [hook] has mode, reserved_host_memory_mib in this version"),
                format!("{shown}: line 4: telemetry: unknown section, ignored; this version knows [wrapper], [hook], [metrics] and [bookings]"),
            ]
        );
        // A bad value of a known key next to an unknown one is still an error.
        std::fs::write(&path, "[hook]\nmode = 3\nfuture_knob = 1\n").expect("write");
        let err = load(&path).expect_err("bad mode").to_string();
        assert!(err.contains("line 2: hook.mode"), "{err}");
        assert!(!err.contains("future_knob"), "{err}");
    }
}
