//! libvirt domain XML: the parts that decide whether a VM with host PCI devices can
//! start. Unknown elements and attributes are ignored; XML that is not well-formed is an
//! error with its line and column.

use std::fmt;

use quick_xml::events::Event;
use serde::Deserialize;

use crate::pci::PciAddress;

/// A libvirt domain, as libvirt passes it to hooks and keeps it in its status files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    /// `<memory>`: the maximum, which VFIO pins in full.
    pub memory_bytes: u64,
    /// `<currentMemory>`, when given.
    pub current_memory_bytes: Option<u64>,
    /// `<memtune><hard_limit>`, when given.
    pub hard_limit_bytes: Option<u64>,
    /// `<memoryBacking><hugepages>`, when given.
    pub hugepages: Option<Vec<HugepageRequest>>,
    /// `<memoryBacking><locked/>`.
    pub locked: bool,
    pub hostdevs: Vec<Hostdev>,
    /// `<memballoon model=...>` unless the model is `none`.
    pub balloon: Option<String>,
    pub nova: Option<NovaInstance>,
}

/// One `<page>` of `<hugepages>`; an empty `<hugepages/>` asks for the default size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugepageRequest {
    /// `None`: the host's default huge page size.
    pub size_bytes: Option<u64>,
    /// NUMA nodes (`nodeset`), as written, when given.
    pub nodeset: Option<String>,
}

/// A PCI `<hostdev>`: a host function passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostdev {
    pub address: PciAddress,
    /// libvirt detaches a managed device from its host driver itself; an unmanaged one
    /// must be on vfio-pci already.
    pub managed: bool,
}

/// Who a VM belongs to, from Nova's `<metadata><nova:instance>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaInstance {
    pub name: Option<String>,
    pub project: Option<String>,
}

/// Why a domain XML could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// 1-based, when the position is known.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for XmlError {}

impl Domain {
    /// Parse a `<domain>` document.
    pub fn from_xml(xml: &str) -> Result<Domain, XmlError> {
        check_well_formed(xml)?;
        let raw: RawDomain = quick_xml::de::from_str(xml).map_err(|e| XmlError {
            line: 1,
            column: 1,
            message: format!("not a libvirt domain: {e}"),
        })?;
        raw.into_domain()
    }

    /// The Nova instance name and project, for messages: ` (Nova instance 'x', project 'y')`.
    pub fn nova_description(&self) -> String {
        let Some(nova) = &self.nova else {
            return String::new();
        };
        match (&nova.name, &nova.project) {
            (Some(n), Some(p)) => format!(" (Nova instance '{n}', project '{p}')"),
            (Some(n), None) => format!(" (Nova instance '{n}')"),
            (None, Some(p)) => format!(" (Nova project '{p}')"),
            (None, None) => String::new(),
        }
    }
}

/// A running domain as libvirt keeps it in `/run/libvirt/qemu/NAME.xml`:
/// `<domstatus>` around the `<domain>`.
pub fn domain_from_status_xml(xml: &str) -> Result<Domain, XmlError> {
    check_well_formed(xml)?;
    let raw: RawStatus = quick_xml::de::from_str(xml).map_err(|e| XmlError {
        line: 1,
        column: 1,
        message: format!("not a libvirt status file (<domstatus>): {e}"),
    })?;
    raw.domain.into_domain()
}

/// Walk the document once with the plain reader: it knows where an error is, which the
/// serde layer does not.
fn check_well_formed(xml: &str) -> Result<(), XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) if depth == 0 && seen_root => return Ok(()),
            Ok(Event::Eof) => {
                let message = if seen_root {
                    "the document ends inside an element"
                } else {
                    "no XML element found"
                };
                return Err(position_error(xml, xml.len(), message.into()));
            }
            Ok(Event::Start(_)) => {
                depth += 1;
                seen_root = true;
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Empty(_)) => seen_root = true,
            Ok(Event::Text(t)) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                let at = reader.buffer_position() as usize;
                return Err(position_error(
                    xml,
                    at,
                    "text outside the root element".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                let at = reader.error_position() as usize;
                return Err(position_error(xml, at, e.to_string()));
            }
        }
    }
}

fn position_error(xml: &str, offset: usize, message: String) -> XmlError {
    let before = &xml.as_bytes()[..offset.min(xml.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    XmlError {
        line,
        column: 1 + before.len() - line_start,
        message,
    }
}

/// A size in libvirt's units (`unit` attribute; KiB when absent) in bytes.
pub fn size_in_bytes(value: u64, unit: Option<&str>) -> Result<u64, String> {
    let factor: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000u64.pow(4),
        "T" | "TiB" => 1 << 40,
        "PB" => 1000u64.pow(5),
        "P" | "PiB" => 1 << 50,
        "EB" => 1000u64.pow(6),
        "E" | "EiB" => 1 << 60,
        other => return Err(format!("unknown memory unit {other:?}")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{value} {} is too large", unit.unwrap_or("KiB")))
}

/// A number as libvirt writes PCI address parts: `0x18` (hex) or `24` (decimal).
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

// The serde side: what the XML holds, before it is checked and converted.

#[derive(Deserialize)]
struct RawStatus {
    domain: RawDomain,
}

#[derive(Deserialize)]
struct RawDomain {
    name: String,
    uuid: Option<String>,
    memory: Option<RawSize>,
    #[serde(rename = "currentMemory")]
    current_memory: Option<RawSize>,
    memtune: Option<RawMemtune>,
    #[serde(rename = "memoryBacking")]
    memory_backing: Option<RawMemoryBacking>,
    devices: Option<RawDevices>,
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawSize {
    #[serde(rename = "@unit")]
    unit: Option<String>,
    #[serde(rename = "$text")]
    value: String,
}

impl RawSize {
    fn bytes(&self, what: &str) -> Result<u64, XmlError> {
        let bad = |message: String| XmlError {
            line: 1,
            column: 1,
            message: format!("<{what}>: {message}"),
        };
        let value: u64 = self
            .value
            .trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not a whole number", self.value)))?;
        size_in_bytes(value, self.unit.as_deref()).map_err(bad)
    }
}

#[derive(Deserialize)]
struct RawMemtune {
    hard_limit: Option<RawSize>,
}

#[derive(Deserialize)]
struct RawMemoryBacking {
    hugepages: Option<RawHugepages>,
    locked: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawHugepages {
    #[serde(default)]
    page: Vec<RawPage>,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(rename = "@size")]
    size: String,
    #[serde(rename = "@unit")]
    unit: Option<String>,
    #[serde(rename = "@nodeset")]
    nodeset: Option<String>,
}

#[derive(Deserialize)]
struct RawDevices {
    #[serde(default)]
    hostdev: Vec<RawHostdev>,
    #[serde(default)]
    memballoon: Vec<RawBalloon>,
}

#[derive(Deserialize)]
struct RawHostdev {
    #[serde(rename = "@mode")]
    mode: Option<String>,
    #[serde(rename = "@type")]
    kind: Option<String>,
    #[serde(rename = "@managed")]
    managed: Option<String>,
    source: Option<RawSource>,
}

#[derive(Deserialize)]
struct RawSource {
    address: Option<RawAddress>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "@domain")]
    domain: Option<String>,
    #[serde(rename = "@bus")]
    bus: String,
    #[serde(rename = "@slot")]
    slot: String,
    #[serde(rename = "@function")]
    function: String,
}

#[derive(Deserialize)]
struct RawBalloon {
    #[serde(rename = "@model")]
    model: String,
}

#[derive(Deserialize)]
struct RawMetadata {
    instance: Option<RawNovaInstance>,
}

#[derive(Deserialize)]
struct RawNovaInstance {
    name: Option<String>,
    owner: Option<RawNovaOwner>,
}

#[derive(Deserialize)]
struct RawNovaOwner {
    project: Option<String>,
}

impl RawDomain {
    fn into_domain(self) -> Result<Domain, XmlError> {
        let memory = self.memory.ok_or_else(|| XmlError {
            line: 1,
            column: 1,
            message: format!("domain '{}' has no <memory>", self.name),
        })?;
        let mut hostdevs = Vec::new();
        let mut balloon = None;
        if let Some(devices) = self.devices {
            for dev in devices.hostdev {
                if dev.mode.as_deref().unwrap_or("subsystem") != "subsystem"
                    || dev.kind.as_deref() != Some("pci")
                {
                    continue;
                }
                let Some(addr) = dev.source.and_then(|s| s.address) else {
                    return Err(XmlError {
                        line: 1,
                        column: 1,
                        message: "a PCI <hostdev> has no <source><address>".into(),
                    });
                };
                hostdevs.push(Hostdev {
                    address: addr.to_pci()?,
                    managed: dev.managed.as_deref() != Some("no"),
                });
            }
            balloon = devices
                .memballoon
                .into_iter()
                .map(|b| b.model)
                .find(|m| m != "none");
        }
        let (hugepages, locked) = match self.memory_backing {
            Some(backing) => (
                match backing.hugepages {
                    Some(h) if h.page.is_empty() => Some(vec![HugepageRequest {
                        size_bytes: None,
                        nodeset: None,
                    }]),
                    Some(h) => Some(
                        h.page
                            .into_iter()
                            .map(|p| {
                                let size = p.size.trim().parse::<u64>().ok();
                                let bytes = size
                                    .ok_or_else(|| format!("{:?} is not a number", p.size))
                                    .and_then(|s| size_in_bytes(s, p.unit.as_deref()));
                                bytes
                                    .map(|b| HugepageRequest {
                                        size_bytes: Some(b),
                                        nodeset: p.nodeset,
                                    })
                                    .map_err(|m| XmlError {
                                        line: 1,
                                        column: 1,
                                        message: format!("<hugepages><page size>: {m}"),
                                    })
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    None => None,
                },
                backing.locked.is_some(),
            ),
            None => (None, false),
        };
        Ok(Domain {
            memory_bytes: memory.bytes("memory")?,
            current_memory_bytes: self
                .current_memory
                .map(|m| m.bytes("currentMemory"))
                .transpose()?,
            hard_limit_bytes: self
                .memtune
                .and_then(|m| m.hard_limit)
                .map(|m| m.bytes("memtune/hard_limit"))
                .transpose()?,
            hugepages,
            locked,
            hostdevs,
            balloon,
            nova: self
                .metadata
                .and_then(|m| m.instance)
                .map(|i| NovaInstance {
                    name: i.name.map(|n| n.trim().to_owned()),
                    project: i.owner.and_then(|o| o.project).map(|p| p.trim().to_owned()),
                }),
            name: self.name.trim().to_owned(),
            uuid: self.uuid.map(|u| u.trim().to_owned()),
        })
    }
}

impl RawAddress {
    fn to_pci(&self) -> Result<PciAddress, XmlError> {
        let part = |name: &str, value: &str, max: u32| {
            parse_number(value)
                .filter(|v| *v <= max)
                .ok_or_else(|| XmlError {
                    line: 1,
                    column: 1,
                    message: format!(
                        "hostdev source address: {name}='{value}' is not a number up to {max:#x}"
                    ),
                })
        };
        Ok(PciAddress {
            domain: part("domain", self.domain.as_deref().unwrap_or("0"), u32::MAX)?,
            bus: part("bus", &self.bus, 0xff)? as u8,
            device: part("slot", &self.slot, 0x1f)? as u8,
            function: part("function", &self.function, 0x7)? as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_GPU_DOMAIN: &str = r#"<domain type='kvm' id='3'>
  <name>instance-0000002a</name>
  <uuid>5f4e3c1a-9b7d-4e2f-8a6c-1d0e9f8b7a65</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="25.2.1"/>
      <nova:name>gpu-worker-1</nova:name>
      <nova:creationTime>2026-11-20 10:00:00</nova:creationTime>
      <nova:flavor name="g1.titanxp"><nova:memory>16384</nova:memory></nova:flavor>
      <nova:owner>
        <nova:user uuid="u1">alice</nova:user>
        <nova:project uuid="p1">climate-lab</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>16777216</memory>
  <currentMemory unit='KiB'>8388608</currentMemory>
  <memtune><hard_limit unit='G'>18</hard_limit></memtune>
  <memoryBacking><hugepages><page size='1' unit='G' nodeset='0'/></hugepages><locked/></memoryBacking>
  <devices>
    <emulator>/usr/libexec/qemu-kvm</emulator>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x18' slot='0x00' function='0x0'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0' bus='24' slot='0' function='1'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/></source></hostdev>
    <memballoon model='virtio'><stats period='10'/></memballoon>
  </devices>
</domain>
"#;

    #[test]
    fn reads_a_nova_gpu_domain() {
        let d = Domain::from_xml(NOVA_GPU_DOMAIN).expect("parse");
        assert_eq!(d.name, "instance-0000002a");
        assert_eq!(
            d.uuid.as_deref(),
            Some("5f4e3c1a-9b7d-4e2f-8a6c-1d0e9f8b7a65")
        );
        assert_eq!(d.memory_bytes, 16 << 30);
        assert_eq!(d.current_memory_bytes, Some(8 << 30));
        assert_eq!(d.hard_limit_bytes, Some(18 << 30));
        assert_eq!(
            d.hugepages,
            Some(vec![HugepageRequest {
                size_bytes: Some(1 << 30),
                nodeset: Some("0".into())
            }])
        );
        assert!(d.locked);
        let addrs: Vec<_> = d
            .hostdevs
            .iter()
            .map(|h| (h.address.to_string(), h.managed))
            .collect();
        assert_eq!(
            addrs,
            vec![
                ("0000:18:00.0".into(), true),
                ("0000:18:00.1".into(), false)
            ]
        );
        assert_eq!(d.balloon.as_deref(), Some("virtio"));
        assert_eq!(
            d.nova_description(),
            " (Nova instance 'gpu-worker-1', project 'climate-lab')"
        );
    }

    #[test]
    fn a_plain_domain_has_no_hostdevs_and_defaults() {
        let d = Domain::from_xml(
            "<domain type='qemu'><name>plain</name><memory>1024</memory>\
             <devices><memballoon model='none'/></devices></domain>",
        )
        .expect("parse");
        assert_eq!(d.memory_bytes, 1 << 20, "KiB when no unit is given");
        assert!(d.hostdevs.is_empty());
        assert_eq!(d.balloon, None);
        assert_eq!(d.hugepages, None);
        assert_eq!(d.nova, None);
        let d = Domain::from_xml(
            "<domain><name>h</name><memory unit='MiB'>2048</memory>\
             <memoryBacking><hugepages/></memoryBacking></domain>",
        )
        .expect("parse");
        assert_eq!(
            d.hugepages,
            Some(vec![HugepageRequest {
                size_bytes: None,
                nodeset: None
            }])
        );
    }

    #[test]
    fn malformed_xml_is_an_error_with_line_and_column() {
        let err = Domain::from_xml("<domain>\n  <name>x</name>\n  <memory>1</mem>\n</domain>")
            .expect_err("mismatched end tag");
        assert_eq!(err.line, 3, "{err}");
        let err = Domain::from_xml("").expect_err("empty");
        assert!(err.message.contains("no XML element"), "{err}");
        let err = Domain::from_xml("<domain><name>x</name>").expect_err("truncated");
        assert!(err.message.contains("ends inside"), "{err}");
        let err = Domain::from_xml("garbage").expect_err("garbage");
        assert!(err.to_string().starts_with("line 1, column"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_them() {
        let err =
            Domain::from_xml("<domain><name>x</name><memory unit='parsecs'>1</memory></domain>")
                .expect_err("unit");
        assert!(err.message.contains("parsecs"), "{err}");
        let err = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices><hostdev mode='subsystem' type='pci'>\
             <source><address bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>",
        )
        .expect_err("bus");
        assert!(err.message.contains("bus='0x100'"), "{err}");
    }

    #[test]
    fn reads_status_files() {
        let status = format!(
            "<domstatus state='running' reason='booted' pid='4242'>\n  <taint flag='high-privileges'/>\n  \
             <monitor path='/var/lib/libvirt/qemu/domain-3/monitor.sock' type='unix'/>\n{NOVA_GPU_DOMAIN}</domstatus>\n"
        );
        let d = domain_from_status_xml(&status).expect("status");
        assert_eq!(d.name, "instance-0000002a");
        assert_eq!(d.hostdevs.len(), 2);
    }

    #[test]
    fn units() {
        assert_eq!(size_in_bytes(1, Some("KB")), Ok(1000));
        assert_eq!(size_in_bytes(3, Some("GiB")), Ok(3 << 30));
        assert_eq!(size_in_bytes(3, None), Ok(3 << 10));
        assert!(size_in_bytes(u64::MAX, Some("EiB")).is_err());
    }
}
