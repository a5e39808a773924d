//! Bad input never panics: arbitrary bytes where host-model reads domain XML, libvirt's
//! status files, the TOML config, sysfs attributes, bookings and ledger lines. Each
//! reader gives a value or an error that names the thing (its path or its position);
//! the config, which the wrapper reads, always gives a whole config (the contract: a
//! broken file is a warning and defaults, never a refused start).

use std::path::Path;

use host_model::bookings;
use host_model::config;
use host_model::domain::{domain_from_status_xml, Domain};
use host_model::libvirt::running_domains;
use host_model::pci::{self, PciAddress};
use proptest::prelude::*;

/// Bytes that look a little like what the reader expects: fragments of it, spliced with
/// arbitrary bytes, so that the search goes past the first character.
fn shaped(pieces: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(pieces).prop_map(|p| p.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..6),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

const XML: &[&str] = &[
    "<domain type='kvm'>",
    "</domain>",
    "<domstatus state='running'>",
    "</domstatus>",
    "<name>vm</name>",
    "<uuid>u</uuid>",
    "<memory unit='GiB'>",
    "16",
    "</memory>",
    "<devices>",
    "</devices>",
    "<hostdev mode='subsystem' type='pci' managed='yes'>",
    "</hostdev>",
    "<source>",
    "</source>",
    "<address domain='0x0000' bus='0x18' slot='0x00' function='0x0'/>",
    "<numatune><memory mode='strict' nodeset='0-1'/></numatune>",
    "<memoryBacking><hugepages/></memoryBacking>",
    "<metadata>",
    "</metadata>",
    "<nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>",
    "</nova:instance>",
    "<nova:project uuid='p'>x</nova:project>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#0;",
    "&bogus;",
    "<?xml version='1.0'?>",
    "\"",
    "'",
    "=",
    "<",
    ">",
    "/",
];

const TOML: &[&str] = &[
    "[wrapper]\n",
    "[hook]\n",
    "[bookings]\n",
    "[metrics]\n",
    "target = ",
    "\"/usr/libexec/qemu-kvm.orig\"",
    "hv_vendor_id = ",
    "\"MyFake_KVM\"",
    "apply_to = ",
    "\"vga\"",
    "\"all\"",
    "hide_kvm = ",
    "true",
    "1",
    "mode = ",
    "\"enforce\"",
    "reserved_host_memory_mib = ",
    "-1",
    "99999999999999999999",
    "\n",
    "=",
    "[",
    "]",
    "\"",
    "'''",
    "#",
    "{",
    "}",
    "[[wrapper]]\n",
    "inf",
    "nan",
];

const JSON: &[&str] = &[
    "{\"bookings\": [",
    "]}",
    "{",
    "}",
    ",",
    "\"id\": \"b\"",
    "\"project\": \"p\"",
    "\"gpu\": \"0000:18:00.0\"",
    "\"model\": \"10de:1b02\"",
    "\"count\": ",
    "0",
    "4294967296",
    "-1",
    "\"start\": \"2026-01-01T00:00:00Z\"",
    "\"end\": \"2026-01-02T00:00:00Z\"",
    "\"end\": \"2025-01-01T00:00:00Z\"",
    "null",
    "\"\\u0000\"",
    "\"\\ud800\"",
];

const SYSFS: &[&str] = &[
    "0x",
    "030000",
    "10de",
    "\n",
    " ",
    "+",
    "-",
    "ffffffffff",
    "0x0x",
    "\0",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn domain_xml_gives_a_domain_or_an_error_with_its_position(bytes in shaped(XML)) {
        let text = String::from_utf8_lossy(&bytes);
        for result in [Domain::from_xml(&text), domain_from_status_xml(&text)] {
            if let Err(e) = result {
                prop_assert!(e.line >= 1 && !e.message.is_empty(), "{:?}", e);
            }
        }
    }

    #[test]
    fn the_config_is_always_whole_and_each_problem_says_where(bytes in shaped(TOML)) {
        let parsed = config::parse(&String::from_utf8_lossy(&bytes));
        for p in &parsed.problems {
            prop_assert!(!p.to_string().is_empty());
        }
        // Whatever the text, the wrapper gets a target it can name in its messages.
        prop_assert!(parsed.config.wrapper.target.is_absolute());
    }

    #[test]
    fn bookings_give_bookings_or_an_error(bytes in shaped(JSON)) {
        if let Err(e) = bookings::parse(&String::from_utf8_lossy(&bytes)) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn sysfs_attributes_give_a_function_or_an_error_naming_the_file(
        class in shaped(SYSFS), vendor in shaped(SYSFS), device in shaped(SYSFS)
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let address: PciAddress = "0000:18:00.0".parse().expect("address");
        let function = dir.path().join("bus/pci/devices/0000:18:00.0");
        std::fs::create_dir_all(&function).expect("mkdir");
        std::fs::write(function.join("class"), &class).expect("write");
        std::fs::write(function.join("vendor"), &vendor).expect("write");
        std::fs::write(function.join("device"), &device).expect("write");
        if let Err(e) = pci::read_class(dir.path(), &address) {
            prop_assert!(e.to_string().contains("class"), "{}", e);
        }
        if let Err(e) = pci::PciFunction::read(dir.path(), address) {
            prop_assert!(e.to_string().contains(&*function.to_string_lossy()), "{}", e);
        }
    }

    #[test]
    fn status_files_are_domains_or_named_as_unreadable(bytes in shaped(XML)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("vm.xml"), &bytes).expect("write");
        let running = running_domains(dir.path());
        prop_assert_eq!(running.domains.len() + running.unreadable.len(), 1);
        for u in &running.unreadable {
            prop_assert!(u.starts_with(&*dir.path().join("vm.xml").to_string_lossy()), "{}", u);
        }
    }

    #[test]
    fn ledger_lines_are_records_or_counted_as_bad(bytes in shaped(JSON)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("2026-11.jsonl"), &bytes).expect("write");
        let _ = host_model::ledger::read(dir.path()).expect("a directory that exists reads");
    }
}

#[test]
fn a_missing_status_directory_means_none_run() {
    let running = running_domains(Path::new("/nonexistent/gpu-passthrough"));
    assert!(running.domains.is_empty() && running.unreadable.is_empty());
}
