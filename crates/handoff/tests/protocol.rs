//! Property tests of the hand-off protocol: everything encoded decodes to
//! the same manifest, and no input whatsoever makes a decoder panic.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use lifecycle_handoff::{escape, unescape, ListenerSpec, Manifest, SystemdManifest, VarNames};
use proptest::prelude::*;

const CASES: u32 = 10_000;

fn tcp_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
        }),
    ]
}

/// Non-empty byte strings without NUL: any path the kernel accepts,
/// including commas, `%`, `=`, newlines and invalid UTF-8.
fn path_bytes() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(1u8..=255, 1..40).prop_map(|b| PathBuf::from(OsString::from_vec(b)))
}

fn listener(name: String) -> impl Strategy<Value = ListenerSpec> {
    let n2 = name.clone();
    prop_oneof![
        tcp_addr().prop_map(move |a| ListenerSpec::tcp(name.clone(), a)),
        path_bytes().prop_map(move |p| ListenerSpec::unix(n2.clone(), p)),
    ]
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let names = prop::collection::btree_set(
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
        0..6,
    );
    let listeners =
        names.prop_flat_map(|names| names.into_iter().map(listener).collect::<Vec<_>>());
    let files = prop::collection::vec(path_bytes(), 0..6);
    (listeners, files).prop_map(|(listeners, files)| Manifest { listeners, files })
}

fn prefix() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9_]{0,12}"
}

fn some_bytes() -> impl Strategy<Value = Option<OsString>> {
    prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // Bytes the protocol uses, to reach deep into the parser.
        "[a-z0-9=:%,.\\[\\]/_A-F-]{0,48}".prop_map(String::into_bytes),
    ])
    .prop_map(|v| v.map(OsString::from_vec))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(m in manifest(), prefix in prefix(), ppid in any::<u32>()) {
        let names = VarNames::new(&prefix).unwrap();
        let mut env: BTreeMap<OsString, OsString> = m.encode(&names, ppid).into_iter().collect();
        for value in env.values() {
            // Values are plain ASCII without spaces or newlines.
            prop_assert!(value.to_str().unwrap().bytes().all(|b| b.is_ascii_graphic()));
        }
        let back = Manifest::decode(&mut env, &names, ppid).unwrap();
        prop_assert_eq!(back, m);
        prop_assert!(env.is_empty(), "variables removed once read");
    }

    #[test]
    fn escape_round_trips_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let escaped = escape(&bytes);
        prop_assert!(!escaped.contains(','));
        prop_assert!(!escaped.contains('='));
        prop_assert_eq!(unescape(&escaped).unwrap(), bytes);
    }

    #[test]
    fn decoders_never_panic(
        sockets in some_bytes(),
        files in some_bytes(),
        fds in some_bytes(),
        ppid_var in some_bytes(),
        ppid in any::<u32>(),
    ) {
        let names = VarNames::default();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("LIFECYCLE_SOCKETS", sockets.clone()),
            ("LIFECYCLE_FILES", files.clone()),
            ("LIFECYCLE_FDS", fds.clone()),
            ("LIFECYCLE_PARENT_PID", ppid_var.clone()),
        ] {
            if let Some(v) = v {
                env.insert(OsString::from(k), v);
            }
        }
        let _ = Manifest::decode(&mut env, &names, ppid);
        prop_assert!(env.is_empty(), "variables removed even when decoding fails");

        let mut env = BTreeMap::new();
        for (k, v) in [("LISTEN_FDS", fds), ("LISTEN_PID", ppid_var), ("LISTEN_FDNAMES", sockets.clone())] {
            if let Some(v) = v {
                env.insert(OsString::from(k), v);
            }
        }
        let _ = SystemdManifest::decode(&mut env, ppid);
        prop_assert!(env.is_empty());

        let mut env = BTreeMap::new();
        for (k, v) in [("MOX_SOCKETS", sockets), ("MOX_FILES", files)] {
            if let Some(v) = v {
                env.insert(OsString::from(k), v);
            }
        }
        let _ = Manifest::decode_mox(&mut env);
        prop_assert!(env.is_empty());
    }

    #[test]
    fn decoding_a_valid_manifest_with_a_wrong_parent_fails(m in manifest(), ppid in 1..u32::MAX) {
        let names = VarNames::default();
        let mut env: BTreeMap<OsString, OsString> = m.encode(&names, ppid).into_iter().collect();
        prop_assert!(Manifest::decode(&mut env, &names, ppid - 1).is_err());
    }
}
