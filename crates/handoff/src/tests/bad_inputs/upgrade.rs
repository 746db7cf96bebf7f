//! The upgrade variables (ready fd, generation, counters) and readiness
//! descriptors of the wrong kind.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use super::{case, check, closed_fd, is_open, Env, Fixtures};
use crate::env::VarNames;
use crate::error::Error;
use crate::lineage::{Lineage, UpgradeVars};
use crate::ready::ReadyChannel;

/// Decodes the upgrade variables: `ready` as LIFECYCLE_READY_FD after 3
/// passed descriptors, and the lineage variables as given.
fn upgrade(ready: Option<&str>, lineage: [Option<&str>; 3]) -> Result<(), Error> {
    let mut env = Env::new();
    let names = VarNames::default();
    let values = [ready, lineage[0], lineage[1], lineage[2]];
    for (name, value) in names.upgrade_vars().into_iter().zip(values) {
        if let Some(value) = value {
            env.insert(name.into(), value.into());
        }
    }
    let vars = UpgradeVars::take(&mut env, &names);
    assert!(env.is_empty(), "upgrade variables removed once read");
    vars.ready_fd(&names, 3)?;
    vars.lineage(&names)?;
    Ok(())
}

/// Adopts `fd` as the readiness channel (it is closed either way).
fn ready_channel(fd: RawFd) -> Result<(), Error> {
    // SAFETY: every caller passes a descriptor it just created for this and
    // owns nowhere else (or one that is not open).
    unsafe { ReadyChannel::adopt(fd, "LIFECYCLE_READY_FD") }.map(drop)
}

/// Every broken upgrade variable or readiness descriptor is refused, naming it.
#[test]
fn bad_upgrade_inputs_name_their_culprit() {
    let fx = Fixtures::new();
    // Readiness descriptors of the wrong kind, each a fresh descriptor
    // handed to the adopting call (which closes it).
    let copy_of =
        |fd: BorrowedFd<'_>| std::os::fd::IntoRawFd::into_raw_fd(fd.try_clone_to_owned().unwrap());
    let file_copy = copy_of(fx.regular.as_fd());
    let file_copy_culprit = format!("fd {file_copy}");
    let not_socket = ready_channel(file_copy);
    let (read_end, _write_end) = nix::unistd::pipe().unwrap();
    let read_end = std::os::fd::IntoRawFd::into_raw_fd(read_end);
    let read_end_culprit = format!("fd {read_end}");
    let a_pipe = ready_channel(read_end);
    let listening_copy = copy_of(fx.unix.as_fd());
    let listening_culprit = format!("fd {listening_copy}");
    let listening = ready_channel(listening_copy);
    let udp_copy = copy_of(fx.udp.as_fd());
    let udp_culprit = format!("fd {udp_copy}");
    let datagram = ready_channel(udp_copy);
    let closed_ready = closed_fd();
    let closed_ready_culprit = format!("fd {closed_ready}");
    let closed_ready_result = ready_channel(closed_ready);

    use Error as E;
    let cases = vec![
        case(
            "ready fd not a number",
            upgrade(Some("six"), [None, None, None]),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_READY_FD", "six", "descriptor number"],
        ),
        case(
            "ready fd among the listeners and files",
            upgrade(Some("4"), [None, None, None]),
            |e| matches!(e, E::ReadyFdMisplaced { value: 4, .. }),
            &["LIFECYCLE_READY_FD=4", "fd 6", "3 passed"],
        ),
        case(
            "ready fd beyond the next one",
            upgrade(Some("9"), [None, None, None]),
            |e| matches!(e, E::ReadyFdMisplaced { value: 9, .. }),
            &["LIFECYCLE_READY_FD=9", "fd 6"],
        ),
        case(
            "generation 0",
            upgrade(None, [Some("0"), Some("0"), Some("0")]),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_GENERATION", "1 or more"],
        ),
        case(
            "generation not a number",
            upgrade(None, [Some("-1"), Some("0"), Some("0")]),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_GENERATION", "-1"],
        ),
        case(
            "generation without its counters",
            upgrade(None, [Some("2"), None, Some("0")]),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_UPGRADES_OK", "all three"],
        ),
        case(
            "counters without a generation",
            upgrade(None, [None, Some("1"), Some("1")]),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_GENERATION"],
        ),
        case(
            "failed-upgrade counter not a number",
            upgrade(None, [Some("2"), Some("1"), Some("1e3")]),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_UPGRADES_FAILED", "1e3"],
        ),
        case(
            "regular file as the readiness channel",
            not_socket,
            |e| matches!(e, E::NotAReadyChannel { .. }),
            &[
                &file_copy_culprit,
                "LIFECYCLE_READY_FD",
                "regular file",
                "Unix stream socket",
            ],
        ),
        case(
            "pipe as the readiness channel",
            a_pipe,
            |e| matches!(e, E::NotAReadyChannel { .. }),
            &[&read_end_culprit, "a pipe"],
        ),
        case(
            "listening socket as the readiness channel",
            listening,
            |e| matches!(e, E::NotAReadyChannel { .. }),
            &[&listening_culprit, "listening socket"],
        ),
        case(
            "UDP socket as the readiness channel",
            datagram,
            |e| matches!(e, E::NotAReadyChannel { .. }),
            &[&udp_culprit, "another family or type"],
        ),
        case(
            "readiness channel not open",
            closed_ready_result,
            |e| matches!(e, E::FdClosed { .. }),
            &[&closed_ready_culprit, "LIFECYCLE_READY_FD"],
        ),
    ];
    check(cases, 13);
    assert!(!is_open(file_copy), "refused readiness fd closed");
    assert!(!is_open(read_end), "refused readiness fd closed");
    assert!(!is_open(listening_copy), "refused readiness fd closed");
    assert!(!is_open(udp_copy), "refused readiness fd closed");
}

#[test]
fn good_upgrade_variables_decode() {
    assert!(upgrade(Some("6"), [Some("3"), Some("1"), Some("1")]).is_ok());
    let mut env = Env::new();
    let names = VarNames::default();
    assert_eq!(Lineage::decode(&mut env, &names).unwrap(), None);
    // Nothing set: no ready fd, no lineage.
    let vars = UpgradeVars::take(&mut env, &names);
    assert_eq!(vars.ready_fd(&names, 3).unwrap(), None);
    assert_eq!(vars.lineage(&names).unwrap(), None);
}
