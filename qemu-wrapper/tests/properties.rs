//! Property tests of the rewrite: for any argv, only `-cpu` values change, and only by
//! the allowed insertions right after the model name; nothing is ever duplicated.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use proptest::prelude::*;
use qemu_wrapper::{count_injected_props, cpu_value_indices, rewrite_argv, split_props, Injection};

fn cpu_part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"kvm=on".to_vec()),
        Just(b"kvm=off".to_vec()),
        Just(b"+kvm".to_vec()),
        Just(b"-kvm".to_vec()),
        Just(b"kvm".to_vec()),
        Just(b"hv_vendor_id=abc".to_vec()),
        Just(b"hv-vendor-id=xyz".to_vec()),
        Just(b"migratable=on".to_vec()),
        Just(b"model-id=a,,kvm=on".to_vec()),
        Just(b"".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn cpu_value() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        Just(b"host".to_vec()),
        Just(b"EPYC-Rome".to_vec()),
        Just(b"help".to_vec()),
        Just(b"?".to_vec()),
        Just(b"".to_vec()),
        prop::collection::vec(any::<u8>(), 0..6),
    ];
    (model, prop::collection::vec(cpu_part(), 0..5)).prop_map(|(model, parts)| {
        let mut v = model;
        for p in parts {
            v.push(b',');
            v.extend(p);
        }
        v
    })
}

fn word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"-cpu".to_vec()),
        1 => Just(b"--cpu".to_vec()),
        1 => Just(b"-S".to_vec()),
        1 => Just(b"-no-user-config".to_vec()),
        1 => Just(b"-name".to_vec()),
        1 => Just(b"-device".to_vec()),
        1 => Just(b"vfio-pci,host=0000:18:00.0".to_vec()),
        4 => cpu_value(),
        2 => prop::collection::vec(any::<u8>(), 0..10),
    ]
}

fn argv() -> impl Strategy<Value = Vec<OsString>> {
    prop::collection::vec(word(), 0..14)
        .prop_map(|words| words.into_iter().map(OsString::from_vec).collect())
}

/// A Hyper-V vendor id QEMU accepts: 1 to 12 printable ASCII characters, no comma.
fn vendor_id() -> impl Strategy<Value = String> {
    "[ -+\\--~]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn only_cpu_values_change_and_only_by_allowed_insertions(
        input in argv(), hide_kvm in any::<bool>(), id in vendor_id()
    ) {
        let injection = Injection { hide_kvm, hv_vendor_id: &id };
        let cpu = cpu_value_indices(&input);
        let mut output = input.clone();
        let changed = rewrite_argv(&mut output, &injection);

        prop_assert_eq!(output.len(), input.len());
        prop_assert_eq!(cpu_value_indices(&output), cpu.clone(), "structure kept");
        for (i, (old, new)) in input.iter().zip(&output).enumerate() {
            if !cpu.contains(&i) {
                prop_assert_eq!(old, new, "argv[{}] is not a -cpu value", i);
                continue;
            }
            let (old, new) = (old.as_bytes(), new.as_bytes());
            let model = split_props(old)[0];
            let rest = &old[model.len()..];
            let vendor = format!(",hv-vendor-id={id}");
            let allowed: [&[u8]; 4] = [
                b"",
                b",kvm=off",
                vendor.as_bytes(),
                &[b",kvm=off".as_slice(), vendor.as_bytes()].concat(),
            ];
            let inserted = new
                .strip_prefix(model)
                .and_then(|n| n.strip_suffix(rest))
                .expect("the new value is the model, an insertion, then the old rest");
            prop_assert!(allowed.contains(&inserted), "insertion {:?}", String::from_utf8_lossy(inserted));

            let (kvm, vid) = count_injected_props(old);
            let (kvm2, vid2) = count_injected_props(new);
            if model.is_empty() || model == b"help" || model == b"?" {
                prop_assert_eq!(old, new);
            } else {
                // Set once (ours) where it was unset; an explicit setting is kept and
                // never joined by a duplicate of ours.
                prop_assert_eq!(vid2, vid.max(1));
                prop_assert_eq!(kvm2, if hide_kvm { kvm.max(1) } else { kvm });
            }
        }
        prop_assert_eq!(changed.len(), input.iter().zip(&output).filter(|(a, b)| a != b).count());

        // Running the wrapper over its own output changes nothing more.
        let mut again = output.clone();
        prop_assert!(rewrite_argv(&mut again, &injection).is_empty());
        prop_assert_eq!(again, output);
    }
}
