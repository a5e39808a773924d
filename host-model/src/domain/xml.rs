//! The XML reader under the domain model: quick-xml's namespace-aware events into a
//! small element tree that keeps each element's offset, so that every error names its
//! line and column.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::{XmlError, NOVA_NAMESPACES};

/// One element of the document: its namespace and local name, its attributes in no
/// namespace (libvirt's and Nova's attributes are unprefixed), its text, its children,
/// and where it starts.
#[derive(Debug)]
pub(super) struct Element {
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    pub(super) attributes: Vec<(String, String)>,
    pub(super) text: String,
    pub(super) children: Vec<Element>,
    pub(super) offset: usize,
}

impl Element {
    /// A libvirt element: no namespace, this local name.
    pub(super) fn is(&self, name: &str) -> bool {
        self.namespace.is_none() && self.name == name
    }

    pub(super) fn is_nova(&self, name: &str) -> bool {
        self.name == name
            && self
                .namespace
                .as_deref()
                .is_some_and(|ns| NOVA_NAMESPACES.contains(&ns))
    }

    pub(super) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(name))
    }

    pub(super) fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(name))
    }

    pub(super) fn nova_child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is_nova(name))
    }

    pub(super) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn trimmed_text(&self) -> Option<String> {
        Some(self.text.trim().to_owned()).filter(|t| !t.is_empty())
    }
}

pub(super) struct Document<'x> {
    pub(super) xml: &'x str,
    pub(super) root: Element,
}

impl<'x> Document<'x> {
    pub(super) fn parse(xml: &'x str) -> Result<Self, XmlError> {
        let mut reader = quick_xml::NsReader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        loop {
            let offset = reader.buffer_position() as usize;
            let (namespace, event) = match reader.read_resolved_event() {
                Ok((ns, event)) => (namespace_of(ns), event),
                Err(e) => {
                    let at = reader.error_position() as usize;
                    return Err(position_error(xml, at, e.to_string()));
                }
            };
            let bad = |message: String| position_error(xml, offset, message);
            match event {
                Event::Start(_) | Event::Empty(_) if root.is_some() => {
                    return Err(bad("content after the document's end".into()));
                }
                Event::Start(start) => {
                    stack.push(element(&reader, &start, namespace, offset).map_err(bad)?);
                }
                Event::Empty(start) => {
                    let e = element(&reader, &start, namespace, offset).map_err(bad)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => root = Some(e),
                    }
                }
                Event::End(_) => {
                    let done = stack.pop().expect("the reader checks end names");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => root = Some(done),
                    }
                }
                Event::Text(text) => {
                    let decoded = text.xml10_content().map_err(|e| bad(e.to_string()))?;
                    match stack.last_mut() {
                        Some(e) => e.text.push_str(&decoded),
                        None if decoded.trim().is_empty() => {}
                        None => return Err(bad("text outside the root element".into())),
                    }
                }
                Event::CData(data) => {
                    let decoded = data.decode().map_err(|e| bad(e.to_string()))?;
                    if let Some(e) = stack.last_mut() {
                        e.text.push_str(&decoded);
                    }
                }
                Event::GeneralRef(reference) => {
                    let name = reference.decode().map_err(|e| bad(e.to_string()))?;
                    let entity = format!("&{name};");
                    let resolved = quick_xml::escape::unescape(&entity)
                        .map_err(|e| bad(format!("{entity}: {e}")))?;
                    if let Some(e) = stack.last_mut() {
                        e.text.push_str(&resolved);
                    }
                }
                Event::Eof => {
                    return match (root, stack.is_empty()) {
                        (Some(root), true) => Ok(Document { xml, root }),
                        (None, true) => Err(bad("no XML element found".into())),
                        _ => Err(bad("the document ends inside an element".into())),
                    };
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    pub(super) fn error(&self, at: &Element, message: String) -> XmlError {
        position_error(self.xml, at.offset, message)
    }
}

fn namespace_of(ns: ResolveResult<'_>) -> Option<String> {
    match ns {
        ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.as_ref()).into_owned()),
        // An undeclared prefix: a namespace no one knows, so not libvirt's nor Nova's.
        ResolveResult::Unknown(prefix) => {
            Some(format!("unknown:{}", String::from_utf8_lossy(&prefix)))
        }
        ResolveResult::Unbound => None,
    }
}

fn element(
    reader: &quick_xml::NsReader<&[u8]>,
    start: &BytesStart<'_>,
    namespace: Option<String>,
    offset: usize,
) -> Result<Element, String> {
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let (ns, local) = reader.resolver().resolve_attribute(attribute.key);
        if !matches!(ns, ResolveResult::Unbound) || attribute.key.as_namespace_binding().is_some() {
            continue; // xmlns declarations and namespaced attributes: not libvirt's
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?;
        attributes.push((
            String::from_utf8_lossy(local.as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Element {
        namespace,
        name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
        attributes,
        text: String::new(),
        children: Vec::new(),
        offset,
    })
}

fn position_error(xml: &str, offset: usize, message: String) -> XmlError {
    let bytes = xml.as_bytes();
    // An event's offset may sit before the whitespace that precedes its tag.
    let mut at = offset.min(bytes.len());
    while at < bytes.len() && bytes[at].is_ascii_whitespace() {
        at += 1;
    }
    if at == bytes.len() {
        at = offset.min(bytes.len());
    }
    let before = &bytes[..at];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    XmlError {
        line,
        column: 1 + String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count(),
        message,
    }
}
