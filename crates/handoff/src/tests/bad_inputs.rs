//! The bad-input tables, one per area (each its own test, so a failure
//! names its area): every kind of broken hand-off yields the right error
//! variant, and its message names the culprit and the fix.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use crate::env::{Manifest, VarNames};
use crate::error::Error;

mod env;
mod fds;
mod lookups;
mod notify;
mod systemd;
mod upgrade;

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

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads descriptor flags; harmless on any number.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// A descriptor number that is not open.
fn closed_fd() -> RawFd {
    (900..2000).find(|fd| !is_open(*fd)).unwrap()
}

/// `fd N`, as messages name a descriptor.
fn fd_name(fd: &impl AsRawFd) -> String {
    format!("fd {}", fd.as_raw_fd())
}

/// Real files and sockets to pass where something else is declared.
struct Fixtures {
    dir: tempfile::TempDir,
    file_path: PathBuf,
    regular: File,
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    unix: UnixListener,
    udp: UdpSocket,
}

impl Fixtures {
    fn new() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        let file_path = dir.path().join("secret.key");
        std::fs::write(&file_path, "k").unwrap();
        let regular = File::open(&file_path).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let unix = UnixListener::bind(dir.path().join("ctl.sock")).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        Fixtures {
            dir,
            file_path,
            regular,
            tcp,
            tcp_addr,
            unix,
            udp,
        }
    }
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

/// Checks a table of at least `at_least` cases: each is refused, with the
/// expected variant, and its message holds every culprit (the entry, the
/// value, and the words of the fix).
fn check(cases: Vec<Case>, at_least: usize) {
    assert!(
        cases.len() >= at_least,
        "the table must hold at least {at_least} cases"
    );
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
}
