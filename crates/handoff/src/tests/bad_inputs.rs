//! The bad-input table: every kind of broken hand-off (variables, entries,
//! descriptors, lookups) yields the right error variant, and its message
//! names the culprit.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;

use crate::env::{Manifest, VarNames};
use crate::error::Error;
use crate::handoff::Handoff;
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::lineage::{Lineage, UpgradeVars};
use crate::mode::Mode;
use crate::notify::{NotifyEnv, NotifyError};
use crate::ready::ReadyChannel;
use crate::spec::ListenerSpec;
use crate::systemd::SystemdManifest;
use crate::validate::{adopt_manifest, validate_file, validate_listener};

const PPID: u32 = 100;

type Env = BTreeMap<OsString, OsString>;

/// A valid hand-off environment with one variable replaced (`Some`) or
/// removed (`None`).
fn ours(var: &str, value: Option<&[u8]>) -> Env {
    let mut env = Env::new();
    for (k, v) in [
        (
            "LIFECYCLE_SOCKETS",
            &b"a=tcp:127.0.0.1:1,b=unix:/run/b.sock"[..],
        ),
        ("LIFECYCLE_FILES", b"/k"),
        ("LIFECYCLE_FDS", b"3"),
        ("LIFECYCLE_PARENT_PID", b"100"),
    ] {
        env.insert(k.into(), OsString::from_vec(v.to_vec()));
    }
    match value {
        Some(v) => env.insert(var.into(), OsString::from_vec(v.to_vec())),
        None => env.remove(std::ffi::OsStr::new(var)),
    };
    env
}

fn decode(var: &str, value: Option<&[u8]>) -> Result<(), Error> {
    Manifest::decode(&mut ours(var, value), &VarNames::default(), PPID).map(drop)
}

fn sockets(value: &[u8]) -> Result<(), Error> {
    let count = if value.is_empty() {
        0
    } else {
        value.split(|b| *b == b',').count()
    };
    let mut env = ours("LIFECYCLE_SOCKETS", Some(value));
    env.insert("LIFECYCLE_FDS".into(), (count + 1).to_string().into());
    Manifest::decode(&mut env, &VarNames::default(), PPID).map(drop)
}

fn files(value: &[u8]) -> Result<(), Error> {
    let mut env = ours("LIFECYCLE_FILES", Some(value));
    env.insert("LIFECYCLE_FDS".into(), "3".into());
    Manifest::decode(&mut env, &VarNames::default(), PPID).map(drop)
}

fn systemd(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> Result<(), Error> {
    let mut env = Env::new();
    for (k, v) in [
        ("LISTEN_FDS", fds),
        ("LISTEN_PID", pid),
        ("LISTEN_FDNAMES", names),
    ] {
        if let Some(v) = v {
            env.insert(k.into(), v.into());
        }
    }
    SystemdManifest::decode(&mut env, 4000).map(drop)
}

fn mox(sockets: Option<&str>) -> Result<(), Error> {
    let mut env = Env::new();
    if let Some(v) = sockets {
        env.insert("MOX_SOCKETS".into(), v.into());
    }
    Manifest::decode_mox(&mut env).map(drop)
}

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

fn tcp_spec(addr: &str) -> ListenerSpec {
    ListenerSpec::tcp("smtp", addr.parse().unwrap())
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads descriptor flags; harmless on any number.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// A descriptor number that is not open.
fn closed_fd() -> RawFd {
    (900..2000).find(|fd| !is_open(*fd)).unwrap()
}

struct Case {
    what: &'static str,
    result: Result<(), Error>,
    variant: fn(&Error) -> bool,
    culprits: Vec<String>,
}

fn case(
    what: &'static str,
    result: Result<(), Error>,
    variant: fn(&Error) -> bool,
    culprits: &[&str],
) -> Case {
    Case {
        what,
        result,
        variant,
        culprits: culprits.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn every_bad_input_names_its_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let file_path = dir.path().join("secret.key");
    std::fs::write(&file_path, "k").unwrap();
    let regular = std::fs::File::open(&file_path).unwrap();
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
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let unix_path = dir.path().join("ctl.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    let directory = std::fs::File::open(dir.path()).unwrap();

    let fd_of = |fd: &dyn AsRawFd| format!("fd {}", fd.as_raw_fd());
    let regular_fd = fd_of(&regular);
    let na_fd = fd_of(&connected_only);
    let udp_fd = fd_of(&udp);
    let tcp_fd = fd_of(&tcp);
    let unix_fd = fd_of(&unix);
    let dir_fd = fd_of(&directory);
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

    // Inherited hand-off holding one listener and one file, for lookups.
    let inherited = || {
        let mut inventory = Inventory::default();
        inventory.listeners.push(PassedListener {
            spec: ListenerSpec::tcp("smtp", tcp_addr),
            fd: tcp.as_fd().try_clone_to_owned().unwrap(),
        });
        inventory.files.push(PassedFile {
            path: file_path.clone(),
            fd: regular.as_fd().try_clone_to_owned().unwrap(),
        });
        Handoff::from_inventory(Mode::Inherited, inventory)
    };
    let mut env_with_vars = ours("LIFECYCLE_FDS", Some(b"3"));

    // Readiness descriptors of the wrong kind, each a fresh descriptor
    // handed to the adopting call (which closes it).
    let copy_of =
        |fd: BorrowedFd<'_>| std::os::fd::IntoRawFd::into_raw_fd(fd.try_clone_to_owned().unwrap());
    let file_copy = copy_of(regular.as_fd());
    let file_copy_culprit = format!("fd {file_copy}");
    let not_socket = ready_channel(file_copy);
    let (read_end, _write_end) = nix::unistd::pipe().unwrap();
    let read_end = std::os::fd::IntoRawFd::into_raw_fd(read_end);
    let read_end_culprit = format!("fd {read_end}");
    let a_pipe = ready_channel(read_end);
    let listening_copy = copy_of(unix.as_fd());
    let listening_culprit = format!("fd {listening_copy}");
    let listening = ready_channel(listening_copy);
    let udp_copy = copy_of(udp.as_fd());
    let udp_culprit = format!("fd {udp_copy}");
    let datagram = ready_channel(udp_copy);
    let closed_ready = closed_fd();
    let closed_ready_culprit = format!("fd {closed_ready}");
    let closed_ready_result = ready_channel(closed_ready);

    use Error as E;
    let cases = vec![
        case(
            "missing parent pid",
            decode("LIFECYCLE_PARENT_PID", None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_PARENT_PID", "privileged parent"],
        ),
        case(
            "empty parent pid",
            decode("LIFECYCLE_PARENT_PID", Some(b"")),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_PARENT_PID", "decimal"],
        ),
        case(
            "parent pid not a number",
            decode("LIFECYCLE_PARENT_PID", Some(b"12x")),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_PARENT_PID", "12x"],
        ),
        case(
            "parent pid of another process",
            decode("LIFECYCLE_PARENT_PID", Some(b"4243")),
            |e| {
                matches!(
                    e,
                    E::WrongParent {
                        value: 4243,
                        actual: 100,
                        ..
                    }
                )
            },
            &["LIFECYCLE_PARENT_PID=4243", "100", "unset"],
        ),
        case(
            "parent pid non-UTF-8",
            decode("LIFECYCLE_PARENT_PID", Some(b"1\xff")),
            |e| matches!(e, E::NotUtf8 { .. }),
            &["LIFECYCLE_PARENT_PID"],
        ),
        case(
            "missing sockets",
            decode("LIFECYCLE_SOCKETS", None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_SOCKETS"],
        ),
        case(
            "missing files",
            decode("LIFECYCLE_FILES", None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_FILES"],
        ),
        case(
            "missing fd count",
            decode("LIFECYCLE_FDS", None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LIFECYCLE_FDS"],
        ),
        case(
            "empty fd count",
            decode("LIFECYCLE_FDS", Some(b"")),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_FDS"],
        ),
        case(
            "more fds than entries",
            decode("LIFECYCLE_FDS", Some(b"4")),
            |e| {
                matches!(
                    e,
                    E::FdCountMismatch {
                        declared: 4,
                        entries: 3,
                        ..
                    }
                )
            },
            &["LIFECYCLE_FDS=4", "3 entries"],
        ),
        case(
            "fewer fds than entries",
            decode("LIFECYCLE_FDS", Some(b"2")),
            |e| {
                matches!(
                    e,
                    E::FdCountMismatch {
                        declared: 2,
                        entries: 3,
                        ..
                    }
                )
            },
            &["LIFECYCLE_FDS=2", "3 entries"],
        ),
        case(
            "negative fd count",
            decode("LIFECYCLE_FDS", Some(b"-1")),
            |e| matches!(e, E::NotANumber { .. }),
            &["LIFECYCLE_FDS", "-1"],
        ),
        case(
            "empty entry",
            sockets(b"a=tcp:127.0.0.1:1,,b=tcp:127.0.0.1:2"),
            |e| matches!(e, E::EmptyEntry { index: 1, .. }),
            &["LIFECYCLE_SOCKETS", "entry 1"],
        ),
        case(
            "trailing comma",
            files(b"/a,"),
            |e| matches!(e, E::EmptyEntry { index: 1, .. }),
            &["LIFECYCLE_FILES", "entry 1"],
        ),
        case(
            "truncated escape",
            sockets(b"a=unix:/run/x%2"),
            |e| matches!(e, E::BadEscape { index: 0, .. }),
            &["LIFECYCLE_SOCKETS", "/run/x%2", "%25"],
        ),
        case(
            "non-hex escape",
            files(b"/ok,/etc/%zzkey"),
            |e| {
                matches!(
                    e,
                    E::BadEscape {
                        index: 1,
                        position: 5,
                        ..
                    }
                )
            },
            &["LIFECYCLE_FILES", "entry 1", "/etc/%zzkey"],
        ),
        case(
            "unescaped newline",
            files(b"/etc/a\nb"),
            |e| matches!(e, E::BadEscape { .. }),
            &["LIFECYCLE_FILES", "%XX"],
        ),
        case(
            "no name separator",
            sockets(b"tcp:127.0.0.1:25"),
            |e| matches!(e, E::BadEntry { .. }),
            &[
                "LIFECYCLE_SOCKETS",
                "tcp:127.0.0.1:25",
                "name=network:address",
            ],
        ),
        case(
            "no network separator",
            sockets(b"smtp=tcp"),
            |e| matches!(e, E::BadEntry { .. }),
            &["LIFECYCLE_SOCKETS", "smtp=tcp"],
        ),
        case(
            "unknown network",
            sockets(b"dns=udp:127.0.0.1:53"),
            |e| matches!(e, E::UnknownNetwork { .. }),
            &["LIFECYCLE_SOCKETS", "\"udp\"", "tcp or unix"],
        ),
        case(
            "host name instead of IP",
            sockets(b"smtp=tcp:localhost:25"),
            |e| matches!(e, E::BadAddress { .. }),
            &["LIFECYCLE_SOCKETS", "localhost:25", "IP:port"],
        ),
        case(
            "TCP address without port",
            sockets(b"smtp=tcp:10.0.0.1"),
            |e| matches!(e, E::BadAddress { .. }),
            &["LIFECYCLE_SOCKETS", "10.0.0.1"],
        ),
        case(
            "empty Unix path",
            sockets(b"ctl=unix:"),
            |e| matches!(e, E::BadAddress { .. }),
            &["LIFECYCLE_SOCKETS", "ctl=unix:", "empty"],
        ),
        case(
            "duplicate names",
            sockets(b"smtp=tcp:127.0.0.1:25,smtp=tcp:127.0.0.1:26"),
            |e| {
                matches!(
                    e,
                    E::DuplicateName {
                        first: 0,
                        second: 1,
                        ..
                    }
                )
            },
            &["LIFECYCLE_SOCKETS", "\"smtp\"", "rename"],
        ),
        case(
            "empty name",
            sockets(b"=tcp:127.0.0.1:25"),
            |e| matches!(e, E::BadName { .. }),
            &["LIFECYCLE_SOCKETS", "=tcp:127.0.0.1:25", "empty"],
        ),
        case(
            "name not UTF-8 once unescaped",
            sockets(b"%FF=tcp:127.0.0.1:25"),
            |e| matches!(e, E::BadName { .. }),
            &["LIFECYCLE_SOCKETS", "%FF=tcp", "UTF-8"],
        ),
        case(
            "raw non-UTF-8 value",
            sockets(b"a=unix:/run/\xff"),
            |e| matches!(e, E::NotUtf8 { .. }),
            &["LIFECYCLE_SOCKETS", "not valid UTF-8"],
        ),
        case(
            "NUL byte in a file path",
            files(b"/etc/key%00"),
            |e| matches!(e, E::BadAddress { .. }),
            &["LIFECYCLE_FILES", "/etc/key%00", "NUL"],
        ),
        case(
            "LISTEN_PID of another process",
            systemd(Some("1"), Some("4001"), None),
            |e| {
                matches!(
                    e,
                    E::WrongListenPid {
                        value: 4001,
                        actual: 4000
                    }
                )
            },
            &["LISTEN_PID=4001", "4000"],
        ),
        case(
            "LISTEN_PID missing",
            systemd(Some("1"), None, None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["LISTEN_PID"],
        ),
        case(
            "LISTEN_FDS not a number",
            systemd(Some("two"), Some("4000"), None),
            |e| matches!(e, E::NotANumber { .. }),
            &["LISTEN_FDS", "\"two\""],
        ),
        case(
            "LISTEN_FDS empty",
            systemd(Some(""), Some("4000"), None),
            |e| matches!(e, E::NotANumber { .. }),
            &["LISTEN_FDS"],
        ),
        case(
            "LISTEN_FDS absurd",
            systemd(Some("100000000"), Some("4000"), None),
            |e| matches!(e, E::NotANumber { .. }),
            &["LISTEN_FDS", "100000000"],
        ),
        case(
            "LISTEN_FDNAMES count differs",
            systemd(Some("2"), Some("4000"), Some("smtp")),
            |e| {
                matches!(
                    e,
                    E::FdNamesCount {
                        count: 1,
                        fds: 2,
                        ..
                    }
                )
            },
            &[
                "LISTEN_FDNAMES=\"smtp\"",
                "LISTEN_FDS=2",
                "FileDescriptorName=",
            ],
        ),
        case(
            "MOX_SOCKETS missing",
            mox(None),
            |e| matches!(e, E::MissingVariable { .. }),
            &["MOX_SOCKETS"],
        ),
        case(
            "MOX_SOCKETS bad address",
            mox(Some("0.0.0.0:25,mail.example:587")),
            |e| matches!(e, E::BadAddress { index: 1, .. }),
            &["MOX_SOCKETS", "mail.example:587"],
        ),
        case(
            "bad prefix",
            VarNames::new("lower-case").map(drop),
            |e| matches!(e, E::BadPrefix { .. }),
            &["\"lower-case\"", "A-Z"],
        ),
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
        case(
            "relative NOTIFY_SOCKET",
            NotifyEnv::from_environment(&Env::from([(
                "NOTIFY_SOCKET".into(),
                "run/notify".into(),
            )]))
            .sender()
            .map(drop)
            .map_err(E::from),
            |e| matches!(e, E::Notify(NotifyError::SocketValue { .. })),
            &["NOTIFY_SOCKET=\"run/notify\"", "absolute path"],
        ),
        case(
            "NOTIFY_SOCKET with a NUL byte",
            NotifyEnv::from_environment(&Env::from([(
                "NOTIFY_SOCKET".into(),
                OsString::from_vec(b"@a\0b".to_vec()),
            )]))
            .sender()
            .map(drop)
            .map_err(E::from),
            |e| matches!(e, E::Notify(NotifyError::SocketValue { .. })),
            &["NOTIFY_SOCKET=", "NUL byte"],
        ),
    ];
    env_with_vars.clear();

    assert!(cases.len() >= 25, "the table must hold at least 25 cases");
    let mut failures = Vec::new();
    for case in cases {
        match case.result {
            Ok(()) => failures.push(format!("{}: accepted", case.what)),
            Err(err) => {
                let message = err.to_string();
                if !(case.variant)(&err) {
                    failures.push(format!("{}: wrong variant {err:?}", case.what));
                }
                for culprit in &case.culprits {
                    if !message.contains(culprit.as_str()) {
                        failures.push(format!(
                            "{}: message does not name {culprit:?}: {message}",
                            case.what
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "bad inputs not reported well:\n{}",
        failures.join("\n")
    );
    // Leak nothing: the descriptor adopted from `first` was closed on error.
    assert!(!is_open(first), "adopted fd closed on error");
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
