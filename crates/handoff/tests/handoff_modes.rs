//! `Handoff` in each mode: the detection rule, and `listen` /
//! `open_privileged` / `prepare` / `close_unclaimed` behaving as documented.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use lifecycle_handoff::{
    bind_listener, Error, FileSpec, Handoff, Inventory, ListenAddress, ListenerSpec, Mode,
    PassedFile, PassedListener,
};

fn env(vars: &[(&str, &str)]) -> BTreeMap<OsString, OsString> {
    vars.iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

#[test]
fn detection_rule_first_match_wins() {
    let b = Handoff::builder;
    let table: Vec<(&str, Result<Mode, ()>, _)> = vec![
        (
            "root, nothing set",
            Ok(Mode::Privileged),
            b().choose(&env(&[]), 0),
        ),
        (
            "user, nothing set",
            Ok(Mode::Immediate),
            b().choose(&env(&[]), 1000),
        ),
        (
            "our variables",
            Ok(Mode::Inherited),
            b().choose(&env(&[("LIFECYCLE_PARENT_PID", "1")]), 0),
        ),
        (
            "our variables win over systemd",
            Ok(Mode::Inherited),
            b().choose(
                &env(&[("LIFECYCLE_SOCKETS", ""), ("LISTEN_FDS", "1")]),
                1000,
            ),
        ),
        (
            "another prefix is not ours",
            Ok(Mode::Privileged),
            b().prefix("GATEWAY")
                .choose(&env(&[("LIFECYCLE_SOCKETS", "")]), 0),
        ),
        (
            "systemd",
            Ok(Mode::Systemd),
            b().choose(&env(&[("LISTEN_FDS", "2"), ("LISTEN_PID", "9")]), 0),
        ),
        (
            "systemd with LISTEN_PID only",
            Ok(Mode::Systemd),
            b().choose(&env(&[("LISTEN_PID", "9")]), 1000),
        ),
        (
            "mox ignored unless asked",
            Ok(Mode::Privileged),
            b().choose(&env(&[("MOX_SOCKETS", "0.0.0.0:25")]), 0),
        ),
        (
            "mox when asked",
            Ok(Mode::Inherited),
            b().mox_compat(true)
                .choose(&env(&[("MOX_SOCKETS", "0.0.0.0:25")]), 1000),
        ),
        (
            "forced immediate as root",
            Ok(Mode::Immediate),
            b().mode(Mode::Immediate).choose(&env(&[]), 0),
        ),
        (
            "forced systemd",
            Ok(Mode::Systemd),
            b().mode(Mode::Systemd).choose(&env(&[]), 0),
        ),
        (
            "forced privileged with hand-off present",
            Err(()),
            b().mode(Mode::Privileged)
                .choose(&env(&[("LIFECYCLE_FDS", "0")]), 0),
        ),
    ];
    for (what, want, got) in table {
        match (want, got) {
            (Ok(mode), Ok(choice)) => {
                assert_eq!(choice.mode, mode, "{what}");
                assert!(!choice.reason.is_empty(), "{what}: a reason to log");
            }
            (Err(()), Err(err)) => assert!(matches!(err, Error::ModeUnavailable { .. }), "{what}"),
            (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
    }
    let mox = b()
        .mox_compat(true)
        .choose(&env(&[("MOX_SOCKETS", "0.0.0.0:25")]), 0)
        .unwrap();
    assert!(mox.mox_format);
    assert!(mox.reason.contains("MOX_SOCKETS"), "{}", mox.reason);
}

fn passed(name: &str, addr: &str) -> (PassedListener, TcpListener) {
    let spec = ListenerSpec::tcp(name, addr.parse().unwrap());
    let (fd, bound) = bind_listener(&spec).unwrap();
    let keep = TcpListener::from(fd.try_clone().unwrap());
    (
        PassedListener {
            spec: spec.with_address(bound),
            fd,
        },
        keep,
    )
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
    FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC)
}

fn same_socket(a: &OwnedFd, b: &TcpListener) -> bool {
    let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
    ino(a.as_fd()) == ino(b.as_fd())
}

#[test]
fn inherited_listeners_are_found_by_name_then_by_address() {
    // Two listeners on one address stay two; a third on another address.
    let (smtp, smtp_sock) = passed("smtp", "127.0.0.1:0");
    let smtp_addr = smtp.spec.address().clone();
    let ListenAddress::Tcp(smtp_sa) = smtp_addr else {
        unreachable!()
    };
    let (other, other_sock) = passed("unnamed", "127.0.0.1:0");
    let ListenAddress::Tcp(other_sa) = other.spec.address().clone() else {
        unreachable!()
    };
    let mut inventory = Inventory::default();
    inventory.listeners.push(smtp);
    inventory.listeners.push(other);
    let mut handoff = Handoff::from_inventory(Mode::Inherited, inventory);

    // By name, with the declared port 0.
    let fd = handoff
        .listen(&ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    assert!(same_socket(&fd, &smtp_sock));
    // Taken once only.
    let again = handoff.listen(&ListenerSpec::tcp("smtp", smtp_sa));
    assert!(
        matches!(again, Err(Error::NoSuchListener { .. })),
        "{again:?}"
    );
    // By address when no name matches.
    let fd = handoff.listen(&ListenerSpec::tcp("web", other_sa)).unwrap();
    assert!(same_socket(&fd, &other_sock));
    assert!(handoff.inventory().is_empty());
}

#[test]
fn inherited_files_are_first_in_first_out_per_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let other = dir.path().join("other");
    std::fs::write(&key, "k").unwrap();
    std::fs::write(&other, "o").unwrap();
    let open = |p: &std::path::Path| OwnedFd::from(std::fs::File::open(p).unwrap());
    let first = open(&key);
    let second = open(&key);
    let (first_raw, second_raw) = (first.as_raw_fd(), second.as_raw_fd());
    let mut inventory = Inventory::default();
    for (path, fd) in [
        (key.clone(), first),
        (other.clone(), open(&other)),
        (key.clone(), second),
    ] {
        inventory.files.push(PassedFile { path, fd });
    }
    let mut handoff = Handoff::from_inventory(Mode::Inherited, inventory);
    assert_eq!(
        handoff.open_privileged(&key).unwrap().as_raw_fd(),
        first_raw
    );
    let mut text = String::new();
    let mut f = handoff.open_privileged(&key).unwrap();
    assert_eq!(f.as_raw_fd(), second_raw);
    f.read_to_string(&mut text).unwrap();
    assert_eq!(text, "k");
    assert!(matches!(
        handoff.open_privileged(&key),
        Err(Error::NoSuchFile { .. })
    ));
    // What nobody took can be listed and closed.
    assert_eq!(handoff.close_unclaimed(), vec![format!("file {other:?}")]);
    assert!(handoff.inventory().is_empty());
}

#[test]
fn privileged_keeps_a_copy_of_the_same_socket_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "secret").unwrap();
    let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Privileged).unwrap();
    let served = TcpListener::from(
        handoff
            .listen(&ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()))
            .unwrap(),
    );
    let dup = handoff.listen(&ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()));
    assert!(matches!(dup, Err(Error::DuplicateName { .. })), "{dup:?}");
    drop(handoff.open_privileged(&key).unwrap());
    let kept = handoff.into_inventory();
    assert_eq!(kept.len(), 2);
    assert!(same_socket(&kept.listeners[0].fd, &served));
    // A connection to the served socket is accepted on the kept copy.
    let addr = served.local_addr().unwrap();
    let _client = TcpStream::connect(addr).unwrap();
    let kept_listener = TcpListener::from(kept.listeners[0].fd.try_clone().unwrap());
    kept_listener.set_nonblocking(false).unwrap();
    kept_listener.accept().unwrap();
    let mut text = String::new();
    std::fs::File::from(kept.files[0].fd.try_clone().unwrap())
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "secret");
}

#[test]
fn immediate_prepare_binds_everything_with_the_right_options() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k").unwrap();
    let mut specs = vec![
        ListenerSpec::tcp("v4", "127.0.0.1:0".parse().unwrap()).with_backlog(7),
        ListenerSpec::unix("ctl", dir.path().join("ctl.sock")),
    ];
    let v6 = TcpListener::bind("[::1]:0").is_ok();
    if v6 {
        specs.push(ListenerSpec::tcp("v6", "[::1]:0".parse().unwrap()));
    }
    let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Immediate).unwrap();
    handoff.prepare(&specs, &[FileSpec::new(&key)]).unwrap();
    let inventory = handoff.into_inventory();
    assert_eq!(inventory.listeners.len(), specs.len());
    for listener in &inventory.listeners {
        let sock = socket2::SockRef::from(&listener.fd);
        assert!(sock.is_listener().unwrap(), "{}", listener.spec);
        assert!(sock.nonblocking().unwrap(), "{}", listener.spec);
        assert!(is_cloexec(&listener.fd), "{}", listener.spec);
        if let ListenAddress::Tcp(addr) = listener.spec.address() {
            assert_ne!(addr.port(), 0, "the bound port is recorded");
            assert!(sock.reuse_address().unwrap());
            if addr.is_ipv6() {
                assert!(sock.only_v6().unwrap());
            }
        }
    }
    assert_eq!(inventory.files.len(), 1);
}

#[test]
fn inherited_prepare_reports_what_was_not_passed() {
    let (smtp, _sock) = passed("smtp", "127.0.0.1:0");
    let mut inventory = Inventory::default();
    inventory.listeners.push(smtp);
    let mut handoff = Handoff::from_inventory(Mode::Inherited, inventory);
    let specs = [
        ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()),
        ListenerSpec::tcp("imap", "127.0.0.1:143".parse().unwrap()),
    ];
    let err = handoff.prepare(&specs, &[]).unwrap_err();
    assert!(err.to_string().contains("imap"), "{err}");
    // Nothing was lost on the way.
    assert_eq!(handoff.inventory().listeners.len(), 1);
    handoff.prepare(&specs[..1], &[]).unwrap();
    let err = handoff
        .prepare(&[], &[FileSpec::new("/etc/x.key")])
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }), "{err}");
}

/// The listen backlog set where the socket is bound, read back with `ss`
/// (its Send-Q column is the backlog of a listening socket).
#[test]
fn bind_sets_the_explicit_backlog() {
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        println!("SKIP: ss not installed (apt-get install iproute2)");
        return;
    }
    for (backlog, spec) in [
        (
            777,
            ListenerSpec::tcp("a", "127.0.0.1:0".parse().unwrap()).with_backlog(777),
        ),
        (1024, ListenerSpec::tcp("b", "127.0.0.1:0".parse().unwrap())),
    ] {
        let (fd, bound) = bind_listener(&spec).unwrap();
        let ListenAddress::Tcp(addr) = bound else {
            unreachable!()
        };
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert_eq!(send_q, vec![backlog.to_string()], "ss said: {text}");
        drop(fd);
    }
}

#[test]
fn a_listener_name_is_bound_once() {
    let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Immediate).unwrap();
    let specs = [
        ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()),
        ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()),
    ];
    let err = handoff.prepare(&specs, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DuplicateName {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"smtp\""), "{err}");
}
