//! Asking for what was not passed (a listener, a listener at another
//! address, a file), and forcing privileged mode under a hand-off.

use std::os::fd::AsFd;

use super::{case, check, ours, Fixtures};
use crate::error::Error;
use crate::handoff::Handoff;
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::mode::Mode;
use crate::spec::ListenerSpec;

/// Every lookup of something not passed names it, what was passed, and the fix.
#[test]
fn bad_lookups_name_their_culprit() {
    let fx = Fixtures::new();
    let tcp_addr = fx.tcp_addr;
    // Inherited hand-off holding one listener and one file, for lookups.
    let inherited = || {
        let mut inventory = Inventory::default();
        inventory.listeners.push(PassedListener {
            spec: ListenerSpec::tcp("smtp", tcp_addr),
            fd: fx.tcp.as_fd().try_clone_to_owned().unwrap(),
        });
        inventory.files.push(PassedFile {
            path: fx.file_path.clone(),
            fd: fx.regular.as_fd().try_clone_to_owned().unwrap(),
        });
        Handoff::from_inventory(Mode::Inherited, inventory)
    };
    let env_with_vars = ours("LIFECYCLE_FDS", Some(b"3"));

    use Error as E;
    let cases = vec![
        case(
            "forced privileged with a hand-off present",
            Handoff::builder()
                .mode(Mode::Privileged)
                .choose(&env_with_vars, 0)
                .map(drop),
            |e| {
                matches!(
                    e,
                    E::ModeUnavailable {
                        mode: Mode::Privileged,
                        ..
                    }
                )
            },
            &["privileged", "LIFECYCLE_SOCKETS", "unset"],
        ),
        case(
            "listener that was not passed",
            inherited()
                .listen(&ListenerSpec::tcp("imap", "127.0.0.1:1".parse().unwrap()))
                .map(drop),
            |e| {
                matches!(
                    e,
                    E::NoSuchListener {
                        mode: Mode::Inherited,
                        ..
                    }
                )
            },
            &["imap", "smtp", "inherited"],
        ),
        case(
            "listener passed with another address",
            inherited()
                .listen(&ListenerSpec::tcp("smtp", "127.0.0.9:25".parse().unwrap()))
                .map(drop),
            |e| matches!(e, E::SpecMismatch { .. }),
            &["\"smtp\"", "127.0.0.9:25", &tcp_addr.to_string()],
        ),
        case(
            "file that was not passed",
            inherited().open_privileged("/etc/other.key").map(drop),
            |e| matches!(e, E::NoSuchFile { .. }),
            &["/etc/other.key", "secret.key", "open_privileged"],
        ),
    ];
    check(cases, 4);
}
