//! libvirt domain XML: the parts that decide whether a VM with host PCI devices can
//! start, and who it belongs to.
//!
//! The document is read namespace-aware and independent of element order: libvirt's
//! own elements are in no namespace, Nova's metadata in
//! `http://openstack.org/xmlns/libvirt/nova/1.0` or `1.1`; an element of another
//! namespace with the same local name (someone else's `<x:instance>`) is someone
//! else's and ignored. Unknown elements and attributes are ignored; XML that is not
//! well-formed, or a value that is wrong, is an error with its line and column.

use std::fmt;

use crate::pci::PciAddress;

mod xml;
use xml::{Document, Element};

/// Nova's metadata namespaces (1.0 and 1.1 differ only in what 1.1 adds).
pub const NOVA_NAMESPACES: [&str; 2] = [
    "http://openstack.org/xmlns/libvirt/nova/1.0",
    "http://openstack.org/xmlns/libvirt/nova/1.1",
];

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
    /// `<cpu><numa><cell>`: the guest's NUMA cells; empty when it has none.
    pub numa_cells: Vec<NumaCell>,
    /// `<numatune>`: which host nodes back the guest's memory.
    pub numatune: Numatune,
    /// PCI host devices: `<hostdev type='pci'>` and `<interface type='hostdev'>`.
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
    /// The guest NUMA cells (`nodeset`) these pages back, as written; `None`: every
    /// cell that no other `<page>` names.
    pub nodeset: Option<String>,
}

/// A guest NUMA cell, `<cell id= memory= unit=>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaCell {
    pub id: u32,
    pub memory_bytes: u64,
}

/// `<numatune>`: `<memory nodeset=>` for the whole guest, `<memnode cellid= nodeset=>`
/// per guest cell (which wins for its cell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numatune {
    pub memory_nodeset: Option<String>,
    /// (guest cell id, host nodeset as written).
    pub memnodes: Vec<(u32, String)>,
}

impl Numatune {
    /// The host nodes (as written) that back guest cell `cell`, if pinned.
    pub fn host_nodes_of(&self, cell: u32) -> Option<&str> {
        self.memnodes
            .iter()
            .find(|(id, _)| *id == cell)
            .map(|(_, set)| set.as_str())
            .or(self.memory_nodeset.as_deref())
    }
}

/// How a host PCI function is given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostdevKind {
    /// `<hostdev mode='subsystem' type='pci'>`
    Hostdev,
    /// `<interface type='hostdev'>`: an SR-IOV VF given as a NIC.
    Interface,
}

/// A PCI host device: a host function passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostdev {
    pub address: PciAddress,
    /// libvirt detaches a managed device from its host driver itself; an unmanaged one
    /// must be on vfio-pci already. Absent means no, as in libvirt.
    pub managed: bool,
    pub kind: HostdevKind,
}

/// Who a VM belongs to, from Nova's `<metadata><nova:instance>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NovaInstance {
    /// `<nova:name>`: the instance's display name.
    pub name: Option<String>,
    /// `<nova:owner><nova:project>`: the project's name.
    pub project: Option<String>,
    /// Its `uuid` attribute: the project id.
    pub project_id: Option<String>,
    /// `<nova:owner><nova:user>`: the user's name.
    pub user: Option<String>,
    pub user_id: Option<String>,
    /// `<nova:flavor name=>`.
    pub flavor: Option<String>,
}

/// Why a domain XML could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// 1-based.
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
        let doc = Document::parse(xml)?;
        if !doc.root.is("domain") {
            return Err(doc.error(
                &doc.root,
                format!(
                    "not a libvirt domain: the document is <{}>, not <domain>",
                    doc.root.name
                ),
            ));
        }
        doc.domain(&doc.root)
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
    let doc = Document::parse(xml)?;
    if !doc.root.is("domstatus") {
        return Err(doc.error(
            &doc.root,
            format!(
                "not a libvirt status file: the document is <{}>, not <domstatus>",
                doc.root.name
            ),
        ));
    }
    let domain = doc
        .root
        .child("domain")
        .ok_or_else(|| doc.error(&doc.root, "<domstatus> holds no <domain>".into()))?;
    doc.domain(domain)
}

/// A size in libvirt's units (`unit` attribute; KiB when absent) in bytes. Units are
/// read as libvirt reads them (virScaleInteger): case-insensitive, `b`/`bytes`, a
/// power-of-1024 prefix alone or with `iB` (`k`, `KiB`), a power-of-1000 one with `B`
/// (`KB`, `mb`).
pub fn size_in_bytes(value: u64, unit: Option<&str>) -> Result<u64, String> {
    let unit_text = unit.unwrap_or("KiB");
    let lower = unit_text.to_ascii_lowercase();
    let factor: u64 = if lower == "b" || lower == "byte" || lower == "bytes" {
        1
    } else {
        let mut chars = lower.chars();
        let power = match chars.next() {
            Some('k') => 1,
            Some('m') => 2,
            Some('g') => 3,
            Some('t') => 4,
            Some('p') => 5,
            Some('e') => 6,
            _ => return Err(format!("unknown memory unit {unit_text:?}")),
        };
        let base: u64 = match chars.as_str() {
            "" | "ib" => 1024,
            "b" => 1000,
            _ => return Err(format!("unknown memory unit {unit_text:?}")),
        };
        base.pow(power)
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{value} {unit_text} is too large"))
}

/// A number as libvirt writes PCI address parts: `0x18` (hex) or `24` (decimal).
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl<'x> Document<'x> {
    /// Read `<domain>`.
    fn domain(&self, d: &Element) -> Result<Domain, XmlError> {
        let name = d
            .child("name")
            .and_then(Element::trimmed_text)
            .ok_or_else(|| self.error(d, "the domain has no <name>".into()))?;
        let memory_element = d
            .child("memory")
            .ok_or_else(|| self.error(d, format!("domain '{name}' has no <memory>")))?;
        let memory_bytes = self.size(memory_element, "memory")?;
        let current_memory_bytes = d
            .child("currentMemory")
            .map(|m| self.size(m, "currentMemory"))
            .transpose()?;
        let hard_limit_bytes = d
            .child("memtune")
            .and_then(|m| m.child("hard_limit"))
            .map(|m| self.size(m, "memtune/hard_limit"))
            .transpose()?;

        let backing = d.child("memoryBacking");
        let hugepages = backing
            .and_then(|b| b.child("hugepages"))
            .map(|h| {
                let pages: Vec<&Element> = h.children("page").collect();
                if pages.is_empty() {
                    return Ok(vec![HugepageRequest {
                        size_bytes: None,
                        nodeset: None,
                    }]);
                }
                pages
                    .into_iter()
                    .map(|p| {
                        let size = self.required(p, "size")?;
                        let value: u64 = size.trim().parse().map_err(|_| {
                            self.error(p, format!("<page size='{size}'>: not a whole number"))
                        })?;
                        let bytes = size_in_bytes(value, p.attribute("unit"))
                            .map_err(|m| self.error(p, format!("<page>: {m}")))?;
                        Ok(HugepageRequest {
                            size_bytes: Some(bytes),
                            nodeset: p.attribute("nodeset").map(str::to_owned),
                        })
                    })
                    .collect::<Result<Vec<_>, XmlError>>()
            })
            .transpose()?;
        let locked = backing.is_some_and(|b| b.child("locked").is_some());

        let mut numa_cells = Vec::new();
        if let Some(numa) = d.child("cpu").and_then(|c| c.child("numa")) {
            for (index, cell) in numa.children("cell").enumerate() {
                let id = match cell.attribute("id") {
                    Some(id) => id.trim().parse().map_err(|_| {
                        self.error(cell, format!("<cell id='{id}'>: not a whole number"))
                    })?,
                    // libvirt numbers cells without an id in order.
                    None => index as u32,
                };
                let memory = self.required(cell, "memory")?;
                let value: u64 = memory.trim().parse().map_err(|_| {
                    self.error(
                        cell,
                        format!("<cell memory='{memory}'>: not a whole number"),
                    )
                })?;
                let memory_bytes = size_in_bytes(value, cell.attribute("unit"))
                    .map_err(|m| self.error(cell, format!("<cell>: {m}")))?;
                numa_cells.push(NumaCell { id, memory_bytes });
            }
        }
        let mut numatune = Numatune::default();
        if let Some(tune) = d.child("numatune") {
            numatune.memory_nodeset = tune
                .child("memory")
                .and_then(|m| m.attribute("nodeset"))
                .map(str::to_owned);
            for memnode in tune.children("memnode") {
                let cell = self.required(memnode, "cellid")?;
                let id = cell.trim().parse().map_err(|_| {
                    self.error(
                        memnode,
                        format!("<memnode cellid='{cell}'>: not a whole number"),
                    )
                })?;
                if let Some(set) = memnode.attribute("nodeset") {
                    numatune.memnodes.push((id, set.to_owned()));
                }
            }
        }

        let mut hostdevs = Vec::new();
        let mut balloon = None;
        if let Some(devices) = d.child("devices") {
            for dev in devices.children.iter() {
                let kind = if dev.is("hostdev")
                    && dev.attribute("mode").unwrap_or("subsystem") == "subsystem"
                    && dev.attribute("type") == Some("pci")
                {
                    HostdevKind::Hostdev
                } else if dev.is("interface") && dev.attribute("type") == Some("hostdev") {
                    HostdevKind::Interface
                } else {
                    continue;
                };
                let address = dev
                    .child("source")
                    .and_then(|s| s.child("address"))
                    .filter(|a| a.attribute("type").is_none_or(|t| t == "pci"));
                let Some(address) = address else {
                    if kind == HostdevKind::Interface {
                        // A USB or other non-PCI source: not ours to check.
                        continue;
                    }
                    return Err(self.error(dev, "a PCI <hostdev> has no <source><address>".into()));
                };
                hostdevs.push(Hostdev {
                    address: self.pci_address(address)?,
                    managed: dev.attribute("managed") == Some("yes"),
                    kind,
                });
            }
            balloon = devices
                .children("memballoon")
                .filter_map(|b| b.attribute("model"))
                .find(|m| *m != "none")
                .map(str::to_owned);
        }

        let nova = d
            .child("metadata")
            .and_then(|m| m.nova_child("instance"))
            .map(|i| {
                let owner = i.nova_child("owner");
                let project = owner.and_then(|o| o.nova_child("project"));
                let user = owner.and_then(|o| o.nova_child("user"));
                let attr = |e: Option<&Element>, name: &str| {
                    e.and_then(|e| e.attribute(name))
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())
                };
                NovaInstance {
                    name: i.nova_child("name").and_then(Element::trimmed_text),
                    project: project.and_then(Element::trimmed_text),
                    project_id: attr(project, "uuid"),
                    user: user.and_then(Element::trimmed_text),
                    user_id: attr(user, "uuid"),
                    flavor: attr(i.nova_child("flavor"), "name"),
                }
            });

        Ok(Domain {
            name,
            uuid: d.child("uuid").and_then(Element::trimmed_text),
            memory_bytes,
            current_memory_bytes,
            hard_limit_bytes,
            hugepages,
            locked,
            numa_cells,
            numatune,
            hostdevs,
            balloon,
            nova,
        })
    }

    fn required<'e>(&self, e: &'e Element, attribute: &str) -> Result<&'e str, XmlError> {
        e.attribute(attribute)
            .ok_or_else(|| self.error(e, format!("<{}> has no {attribute}= attribute", e.name)))
    }

    /// `<memory unit='KiB'>16777216</memory>` in bytes.
    fn size(&self, e: &Element, what: &str) -> Result<u64, XmlError> {
        let bad = |message: String| self.error(e, format!("<{what}>: {message}"));
        let value: u64 = e
            .text
            .trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not a whole number", e.text.trim())))?;
        size_in_bytes(value, e.attribute("unit")).map_err(bad)
    }

    fn pci_address(&self, a: &Element) -> Result<PciAddress, XmlError> {
        let part = |name: &str, default: Option<&str>, max: u32| {
            let value = a
                .attribute(name)
                .or(default)
                .ok_or_else(|| self.error(a, format!("hostdev source address has no {name}=")))?;
            parse_number(value).filter(|v| *v <= max).ok_or_else(|| {
                self.error(
                    a,
                    format!(
                        "hostdev source address: {name}='{value}' is not a number up to {max:#x}"
                    ),
                )
            })
        };
        Ok(PciAddress {
            domain: part("domain", Some("0"), u32::MAX)?,
            bus: part("bus", None, 0xff)? as u8,
            device: part("slot", None, 0x1f)? as u8,
            function: part("function", None, 0x7)? as u8,
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
            d.nova,
            Some(NovaInstance {
                name: Some("gpu-worker-1".into()),
                project: Some("climate-lab".into()),
                project_id: Some("p1".into()),
                user: Some("alice".into()),
                user_id: Some("u1".into()),
                flavor: Some("g1.titanxp".into()),
            })
        );
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
    fn managed_absent_means_no_as_in_libvirt() {
        let d = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices>\
             <hostdev mode='subsystem' type='pci'><source><address bus='0x18' slot='0' function='0'/></source></hostdev>\
             <hostdev mode='subsystem' type='pci' managed='yes'><source><address bus='0x18' slot='0' function='1'/></source></hostdev>\
             </devices></domain>",
        )
        .expect("parse");
        let managed: Vec<bool> = d.hostdevs.iter().map(|h| h.managed).collect();
        assert_eq!(managed, vec![false, true]);
    }

    #[test]
    fn interface_hostdevs_are_pci_host_devices() {
        let d = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices>\
             <interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/>\
             <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></interface>\
             <interface type='bridge'><source bridge='br0'/></interface>\
             </devices></domain>",
        )
        .expect("parse");
        assert_eq!(
            d.hostdevs,
            vec![Hostdev {
                address: "0000:3b:02.1".parse().expect("address"),
                managed: true,
                kind: HostdevKind::Interface,
            }]
        );
    }

    #[test]
    fn another_namespace_with_nova_names_is_not_nova() {
        let xml = r#"<domain><name>x</name><memory>1</memory>
  <metadata>
    <x:instance xmlns:x="http://example.org/other"><x:name>not-nova</x:name></x:instance>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0"><nova:name>vm</nova:name></nova:instance>
    <y:instance xmlns:y="http://example.org/third"/>
  </metadata>
  <y:memory xmlns:y="http://example.org/third">99</y:memory>
</domain>"#;
        let d = Domain::from_xml(xml).expect("parse");
        assert_eq!(
            d.memory_bytes, 1024,
            "the namespaced <y:memory> is not libvirt's"
        );
        assert_eq!(
            d.nova.and_then(|n| n.name).as_deref(),
            Some("vm"),
            "only Nova's namespace counts"
        );
    }

    #[test]
    fn element_order_does_not_matter() {
        let d = Domain::from_xml(
            "<domain><devices><hostdev mode='subsystem' type='pci' managed='yes'>\
             <source><address bus='0x18' slot='0' function='0'/></source></hostdev></devices>\
             <memory unit='GiB'>4</memory><name>late</name><devices>\
             </devices></domain>",
        )
        .expect("parse");
        assert_eq!(d.name, "late");
        assert_eq!(d.memory_bytes, 4 << 30);
        assert_eq!(d.hostdevs.len(), 1);
    }

    #[test]
    fn numa_cells_and_numatune() {
        let d = Domain::from_xml(
            "<domain><name>n</name><memory unit='GiB'>16</memory>\
             <numatune><memory mode='strict' nodeset='0-1'/><memnode cellid='0' mode='strict' nodeset='1'/></numatune>\
             <cpu><numa><cell id='0' cpus='0-3' memory='8' unit='GiB'/><cell id='1' cpus='4-7' memory='8388608'/></numa></cpu>\
             </domain>",
        )
        .expect("parse");
        assert_eq!(
            d.numa_cells,
            vec![
                NumaCell {
                    id: 0,
                    memory_bytes: 8 << 30
                },
                NumaCell {
                    id: 1,
                    memory_bytes: 8 << 30
                }
            ]
        );
        assert_eq!(d.numatune.host_nodes_of(0), Some("1"));
        assert_eq!(d.numatune.host_nodes_of(1), Some("0-1"));
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
    fn bad_values_are_errors_naming_them_where_they_are() {
        let err = Domain::from_xml(
            "<domain>\n  <name>x</name>\n  <memory unit='parsecs'>1</memory>\n</domain>",
        )
        .expect_err("unit");
        assert!(err.message.contains("parsecs"), "{err}");
        assert_eq!((err.line, err.column), (3, 3), "{err}");
        let err = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices>\n<hostdev mode='subsystem' type='pci'>\
             <source><address bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>",
        )
        .expect_err("bus");
        assert!(err.message.contains("bus='0x100'"), "{err}");
        assert_eq!(err.line, 2, "{err}");
        let err = Domain::from_xml("<network><name>x</name></network>").expect_err("not a domain");
        assert!(err.message.contains("not <domain>"), "{err}");
    }

    #[test]
    fn entities_are_decoded() {
        let d = Domain::from_xml(
            "<domain><name>a&amp;b&#x41;</name><memory>1</memory><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
             <nova:owner><nova:project uuid='p&lt;1'>R&amp;D</nova:project></nova:owner>\
             </nova:instance></metadata></domain>",
        )
        .expect("parse");
        assert_eq!(d.name, "a&bA");
        let nova = d.nova.expect("nova");
        assert_eq!(nova.project.as_deref(), Some("R&D"));
        assert_eq!(nova.project_id.as_deref(), Some("p<1"));
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
        let err = domain_from_status_xml("<domstatus/>").expect_err("no domain");
        assert!(err.message.contains("no <domain>"), "{err}");
    }

    #[test]
    fn units_as_libvirt_reads_them() {
        assert_eq!(size_in_bytes(1, Some("KB")), Ok(1000));
        assert_eq!(size_in_bytes(1, Some("kb")), Ok(1000));
        assert_eq!(size_in_bytes(3, Some("GiB")), Ok(3 << 30));
        assert_eq!(size_in_bytes(3, Some("gib")), Ok(3 << 30));
        assert_eq!(size_in_bytes(3, Some("g")), Ok(3 << 30));
        assert_eq!(size_in_bytes(3, Some("M")), Ok(3 << 20));
        assert_eq!(size_in_bytes(3, Some("Bytes")), Ok(3));
        assert_eq!(size_in_bytes(3, None), Ok(3 << 10));
        assert!(size_in_bytes(u64::MAX, Some("EiB")).is_err());
        assert!(size_in_bytes(1, Some("Gx")).is_err());
        assert!(size_in_bytes(1, Some("")).is_err());
    }

    #[test]
    fn every_unit_libvirt_knows_and_no_other() {
        let ok: [(&str, u64); 21] = [
            ("b", 1),
            ("byte", 1),
            ("bytes", 1),
            ("k", 1 << 10),
            ("KiB", 1 << 10),
            ("KB", 1_000),
            ("m", 1 << 20),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("g", 1 << 30),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("t", 1 << 40),
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
            ("p", 1 << 50),
            ("PiB", 1 << 50),
            ("PB", 1_000_000_000_000_000),
            ("e", 1 << 60),
            ("EiB", 1 << 60),
            ("EB", 1_000_000_000_000_000_000),
        ];
        for (unit, factor) in ok {
            assert_eq!(size_in_bytes(1, Some(unit)), Ok(factor), "{unit}");
        }
        for unit in ["", "x", "kibi", "KiBB", "bits", "Z", "ZiB"] {
            assert_eq!(
                size_in_bytes(1, Some(unit)),
                Err(format!("unknown memory unit {unit:?}")),
                "{unit}"
            );
        }
        assert_eq!(
            size_in_bytes(16, Some("EiB")),
            Err("16 EiB is too large".into())
        );
    }

    #[test]
    fn only_pci_subsystem_hostdevs_and_pci_interfaces_count() {
        let d = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices>\
             <hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>\
             <hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>\
             <interface type='hostdev'><source><address type='usb' bus='0' port='1'/></source></interface>\
             <interface type='hostdev'/>\
             <interface type='direct'><source dev='eth0' mode='passthrough'><address type='pci' domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></source></interface>\
             <hostdev type='pci' managed='yes'><source><address domain='0x0000' bus='0x18' slot='0x00' function='0x0'/></source></hostdev>\
             </devices></domain>",
        )
        .expect("parse");
        assert_eq!(
            d.hostdevs,
            vec![Hostdev {
                address: "0000:18:00.0".parse().expect("address"),
                managed: true,
                kind: HostdevKind::Hostdev,
            }]
        );
        let e = Domain::from_xml(
            "<domain><name>x</name><memory>1</memory><devices>\n\
             <hostdev mode='subsystem' type='pci'><source/></hostdev></devices></domain>",
        )
        .expect_err("no address");
        assert_eq!(e.message, "a PCI <hostdev> has no <source><address>");
        assert_eq!(e.line, 2);
    }

    fn xml_error(line: usize, column: usize, message: &str) -> XmlError {
        XmlError {
            line,
            column,
            message: message.into(),
        }
    }

    #[test]
    fn one_root_element_and_no_text_beside_it_each_error_where_it_is() {
        let cases = [
            (
                "<domain><name>x</name></domain>\n\n  <domain/>",
                xml_error(3, 3, "content after the document's end"),
            ),
            (
                "<domain/><domain><name>y</name></domain>",
                xml_error(1, 10, "content after the document's end"),
            ),
            (
                // Columns count characters, not bytes.
                "<domain><name>\u{e9}t\u{e9}</name></domain><x/>",
                xml_error(1, 34, "content after the document's end"),
            ),
            (
                "x<domain/>",
                xml_error(1, 1, "text outside the root element"),
            ),
            (
                "<domain/>\ntrailing",
                xml_error(2, 1, "text outside the root element"),
            ),
        ];
        for (xml, expected) in cases {
            assert_eq!(Domain::from_xml(xml).expect_err(xml), expected, "{xml}");
        }
        // Whitespace around the root is no text.
        let d = Domain::from_xml("\n  <domain><name>x</name><memory>1</memory></domain>\n  ")
            .expect("whitespace only");
        assert_eq!(d.name, "x");
    }

    #[test]
    fn attributes_of_other_namespaces_are_not_libvirts() {
        let d = Domain::from_xml(
            "<domain xmlns:x='urn:x'><name>x</name><memory>1</memory><devices>\
             <hostdev x:managed='yes' mode='subsystem' type='pci'><source>\
             <address domain='0x0000' bus='0x18' slot='0x00' function='0x0'/></source></hostdev>\
             </devices></domain>",
        )
        .expect("parse");
        assert_eq!(
            d.hostdevs,
            vec![Hostdev {
                address: "0000:18:00.0".parse().expect("address"),
                managed: false,
                kind: HostdevKind::Hostdev,
            }]
        );
    }
}
