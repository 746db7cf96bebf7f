//! Inherited descriptors that are not what their entry declares: closed,
//! not a socket, not listening, another type, family or address, or a
//! socket or directory where a file is declared.

use std::os::fd::{AsFd, AsRawFd};

use super::{case, check, closed_fd, fd_name, is_open, Fixtures};
use crate::env::{Manifest, VarNames};
use crate::error::Error;
use crate::spec::ListenerSpec;
use crate::validate::{adopt_manifest, validate_file, validate_listener};

fn tcp_spec(addr: &str) -> ListenerSpec {
    ListenerSpec::tcp("smtp", addr.parse().unwrap())
}

/// Every wrong descriptor is refused with its number, its entry and what it is.
#[test]
fn bad_descriptors_name_their_culprit() {
    let fx = Fixtures::new();
    let (regular, tcp, tcp_addr, udp, unix) =
        (&fx.regular, &fx.tcp, fx.tcp_addr, &fx.udp, &fx.unix);
    let connected_only =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    connected_only
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let not_listening_addr = connected_only.local_addr().unwrap().as_socket().unwrap();
    let directory = std::fs::File::open(fx.dir.path()).unwrap();

    let regular_fd = fd_name(regular);
    let na_fd = fd_name(&connected_only);
    let udp_fd = fd_name(udp);
    let tcp_fd = fd_name(tcp);
    let unix_fd = fd_name(unix);
    let dir_fd = fd_name(&directory);
    let tcp_other_port = format!("127.0.0.1:{}", if tcp_addr.port() == 1 { 2 } else { 1 });

    // Fewer descriptors than entries: entry 0 is a real listener moved to a
    // free high number, entry 1's descriptor does not exist.
    let first = {
        let clone = tcp.try_clone().unwrap();
        // SAFETY: F_DUPFD on our own open listener creates a new descriptor
        // that nothing owns yet; it is handed to adopt_manifest below.
        let high = unsafe { libc::fcntl(clone.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1500) };
        assert!(high >= 1500);
        high
    };
    assert!(!is_open(first + 1), "fd {} is free", first + 1);
    let fewer = Manifest {
        listeners: vec![
            ListenerSpec::tcp("a", tcp_addr),
            ListenerSpec::tcp("b", tcp_addr),
        ],
        files: vec![],
    };
    // SAFETY: `first` is a descriptor this test just created and owns nowhere
    // else; `first + 1` is not open (checked), so it is reported, not adopted.
    let fewer_result = unsafe { adopt_manifest(&fewer, &VarNames::default(), first) }.map(drop);
    let fewer_culprit = format!("fd {}", first + 1);
    let closed = closed_fd();
    let closed_manifest = Manifest {
        listeners: vec![],
        files: vec!["/etc/gw.key".into()],
    };
    // SAFETY: `closed` is not open, so nothing is adopted.
    let closed_result =
        unsafe { adopt_manifest(&closed_manifest, &VarNames::default(), closed) }.map(drop);
    let closed_culprit = format!("fd {closed}");

    use Error as E;
    let cases = vec![
        case(
            "descriptor closed (fewer fds than entries)",
            fewer_result,
            |e| matches!(e, E::FdClosed { .. }),
            &[&fewer_culprit, "LIFECYCLE_SOCKETS entry 1", "fewer"],
        ),
        case(
            "file descriptor closed",
            closed_result,
            |e| matches!(e, E::FdClosed { .. }),
            &[&closed_culprit, "LIFECYCLE_FILES entry 0", "/etc/gw.key"],
        ),
        case(
            "regular file where a socket is declared",
            validate_listener(regular.as_fd(), &tcp_spec("127.0.0.1:0"), "entry \"smtp\"")
                .map(drop),
            |e| {
                matches!(
                    e,
                    E::NotASocket {
                        found: "regular file",
                        ..
                    }
                )
            },
            &[&regular_fd, "entry \"smtp\"", "regular file"],
        ),
        case(
            "socket that is not listening",
            validate_listener(
                connected_only.as_fd(),
                &ListenerSpec::tcp("smtp", not_listening_addr),
                "entry \"smtp\"",
            )
            .map(drop),
            |e| matches!(e, E::NotListening { .. }),
            &[&na_fd, "entry \"smtp\"", "SO_ACCEPTCONN"],
        ),
        case(
            "UDP socket where TCP is declared",
            validate_listener(udp.as_fd(), &tcp_spec("127.0.0.1:0"), "entry \"smtp\"").map(drop),
            |e| matches!(e, E::WrongSocketType { .. }),
            &[&udp_fd, "entry \"smtp\"", "datagram"],
        ),
        case(
            "address mismatch",
            validate_listener(tcp.as_fd(), &tcp_spec(&tcp_other_port), "entry \"smtp\"").map(drop),
            |e| matches!(e, E::AddressMismatch { .. }),
            &[
                &tcp_fd,
                "entry \"smtp\"",
                &tcp_addr.to_string(),
                &tcp_other_port,
            ],
        ),
        case(
            "IP mismatch even with port 0",
            validate_listener(tcp.as_fd(), &tcp_spec("127.0.0.2:0"), "entry \"smtp\"").map(drop),
            |e| matches!(e, E::AddressMismatch { .. }),
            &[&tcp_fd, "127.0.0.2:0"],
        ),
        case(
            "Unix socket where TCP is declared",
            validate_listener(unix.as_fd(), &tcp_spec("127.0.0.1:0"), "entry \"smtp\"").map(drop),
            |e| matches!(e, E::FamilyMismatch { .. }),
            &[&unix_fd, "unix", "declares tcp"],
        ),
        case(
            "socket where a file is declared",
            validate_file(tcp.as_fd(), "entry \"/etc/key\"").map(drop),
            |e| {
                matches!(
                    e,
                    E::NotAFile {
                        found: "socket",
                        ..
                    }
                )
            },
            &[&tcp_fd, "/etc/key", "socket"],
        ),
        case(
            "directory where a file is declared",
            validate_file(directory.as_fd(), "entry \"/etc\"").map(drop),
            |e| {
                matches!(
                    e,
                    E::NotAFile {
                        found: "directory",
                        ..
                    }
                )
            },
            &[&dir_fd, "directory"],
        ),
    ];
    check(cases, 10);
    // Leak nothing: the descriptor adopted from `first` was closed on error.
    assert!(!is_open(first), "adopted fd closed on error");
}
