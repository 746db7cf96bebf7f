//! How passed listeners are claimed by the program's specs in systemd mode:
//! by name, else by address (unnamed first), always ending up with the
//! spec's name; and the errors when nothing matches.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};

use super::Handoff;
use crate::error::Error;
use crate::inventory::{Inventory, PassedListener};
use crate::mode::Mode;
use crate::spec::{ListenAddress, ListenerSpec};

/// A listening socket on 127.0.0.1 as systemd would pass it: named
/// `name`, or (None) named by its address, as `SystemdManifest::adopt`
/// names an unnamed descriptor.
fn activated(name: Option<&str>) -> (PassedListener, SocketAddr, TcpListener) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let keep = tcp.try_clone().unwrap();
    let address = ListenAddress::Tcp(addr);
    let name = name.map_or_else(|| address.to_string(), str::to_owned);
    let passed = PassedListener {
        spec: ListenerSpec::new(name, address),
        fd: OwnedFd::from(tcp),
    };
    (passed, addr, keep)
}

fn systemd(listeners: Vec<PassedListener>) -> Handoff {
    Handoff::from_inventory(
        Mode::Systemd,
        Inventory {
            listeners,
            files: vec![],
        },
    )
}

fn same_socket(a: &OwnedFd, b: &TcpListener) -> bool {
    let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
    ino(a.as_fd()) == ino(b.as_fd())
}

fn names(handoff: &Handoff) -> Vec<&str> {
    handoff
        .inventory()
        .listeners
        .iter()
        .map(|l| l.spec.name())
        .collect()
}

#[test]
fn an_unnamed_socket_takes_the_name_of_the_listener_that_claims_it() {
    let (passed, addr, keep) = activated(None);
    assert_eq!(passed.spec.name(), addr.to_string());
    let mut handoff = systemd(vec![passed]);
    handoff
        .prepare(&[ListenerSpec::tcp("smtp", addr)], &[])
        .unwrap();
    let inventory = handoff.into_inventory();
    assert_eq!(inventory.listeners.len(), 1);
    let smtp = &inventory.listeners[0];
    // The FdBroker finds it by the config's name, at the bound address.
    assert_eq!(smtp.spec.name(), "smtp");
    assert_eq!(smtp.spec.address(), &ListenAddress::Tcp(addr));
    assert!(same_socket(&smtp.fd, &keep));
}

#[test]
fn listen_renames_an_unnamed_socket_too() {
    let (passed, _addr, keep) = activated(None);
    let mut handoff = systemd(vec![passed]);
    // Port 0 in the config accepts the activated socket's port.
    let fd = handoff
        .listen(&ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    assert!(same_socket(&fd, &keep));
    assert!(handoff.inventory().is_empty());
}

#[test]
fn names_win_over_addresses_and_unnamed_sockets_come_first() {
    // `other.socket` is named, but not like any listener (systemd's default
    // name is the socket unit's); `imap` is named; one socket is unnamed.
    let (other, other_addr, _k1) = activated(Some("other.socket"));
    let (imap, imap_addr, imap_keep) = activated(Some("imap"));
    let (unnamed, _unnamed_addr, unnamed_keep) = activated(None);
    let mut handoff = systemd(vec![other, imap, unnamed]);
    // `web` (any port on 127.0.0.1) is asked for first and could take any
    // of the three by address; `imap` must still get its own socket, and
    // `web` the unnamed one.
    handoff
        .prepare(
            &[
                ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap()),
                ListenerSpec::tcp("imap", imap_addr),
            ],
            &[],
        )
        .unwrap();
    let inventory = handoff.into_inventory();
    let got: Vec<&str> = inventory.listeners.iter().map(|l| l.spec.name()).collect();
    // The claimed ones in the order asked, the unclaimed one after them.
    assert_eq!(got, ["web", "imap", "other.socket"]);
    assert!(same_socket(&inventory.listeners[0].fd, &unnamed_keep));
    assert!(same_socket(&inventory.listeners[1].fd, &imap_keep));
    assert_eq!(
        inventory.listeners[2].spec.address(),
        &ListenAddress::Tcp(other_addr)
    );
}

#[test]
fn a_socket_named_otherwise_is_claimed_by_its_address() {
    let (passed, addr, keep) = activated(Some("lifecycle-gateway-smtp.socket"));
    let mut handoff = systemd(vec![passed]);
    handoff
        .prepare(&[ListenerSpec::tcp("smtp", addr)], &[])
        .unwrap();
    assert_eq!(names(&handoff), ["smtp"]);
    assert!(same_socket(&handoff.inventory().listeners[0].fd, &keep));
}

#[test]
fn a_listener_without_an_activated_socket_is_a_clear_error() {
    let (passed, smtp_addr, _keep) = activated(Some("smtp"));
    let mut handoff = systemd(vec![passed]);
    let imap: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = handoff
        .prepare(
            &[
                ListenerSpec::tcp("smtp", smtp_addr),
                ListenerSpec::tcp("imap", imap),
            ],
            &[],
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoActivatedSocket { name, .. } if name == "imap"),
        "{err:?}"
    );
    let text = err.to_string();
    for needle in [
        "\"imap\"",
        "127.0.0.1:1",
        "FileDescriptorName=imap",
        "--fdname=imap",
        // The smtp socket is claimed by its listener: nothing else is left.
        "not yet claimed: none",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    // Nothing was taken: the smtp socket is still there, by its name.
    assert_eq!(names(&handoff), ["smtp"]);
}

#[test]
fn a_named_socket_at_another_address_is_a_clear_error() {
    let (passed, smtp_addr, _keep) = activated(Some("smtp"));
    let mut handoff = systemd(vec![passed]);
    let want: SocketAddr = "127.0.0.2:25".parse().unwrap();
    let err = handoff
        .listen(&ListenerSpec::tcp("smtp", want))
        .unwrap_err();
    assert!(
        matches!(err, Error::ActivatedSocketMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    let passed_at = smtp_addr.to_string();
    for needle in [
        passed_at.as_str(),
        "127.0.0.2:25",
        "ListenStream=",
        "FileDescriptorName=smtp",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert_eq!(names(&handoff), ["smtp"]);
}

#[test]
fn inherited_mode_keeps_its_own_errors() {
    let (passed, _addr, _keep) = activated(Some("smtp"));
    let mut handoff = Handoff::from_inventory(
        Mode::Inherited,
        Inventory {
            listeners: vec![passed],
            files: vec![],
        },
    );
    let err = handoff
        .listen(&ListenerSpec::tcp("imap", "127.0.0.1:1".parse().unwrap()))
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchListener { .. }), "{err:?}");
}

#[test]
fn a_leftover_sharing_a_claimed_name_is_named_by_its_address() {
    // systemd names every socket of a unit alike (`ListenStream=` twice,
    // `FileDescriptorName=smtp`): the one the config claims keeps "smtp",
    // the other is named by its address, so names stay unique and the
    // broker closes it as unclaimed.
    let (first, addr, keep) = activated(Some("smtp"));
    let (second, other, _keep_other) = activated(Some("smtp"));
    let mut handoff = systemd(vec![first, second]);
    handoff
        .prepare(&[ListenerSpec::tcp("smtp", addr)], &[])
        .unwrap();
    assert_eq!(names(&handoff), vec!["smtp".to_owned(), other.to_string()]);
    let inventory = handoff.into_inventory();
    assert!(same_socket(&inventory.listeners[0].fd, &keep));
    assert_eq!(
        inventory.listeners[1].spec.address(),
        &ListenAddress::Tcp(other)
    );
}
