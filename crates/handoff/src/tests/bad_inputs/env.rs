//! Our hand-off variables (parent pid, sockets, files, count, escapes,
//! names), mox's, and the variable prefix.

use super::{case, check, decode, ours, Env, PPID};
use crate::env::{Manifest, VarNames};
use crate::error::Error;

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

fn mox(sockets: Option<&str>) -> Result<(), Error> {
    let mut env = Env::new();
    if let Some(v) = sockets {
        env.insert("MOX_SOCKETS".into(), v.into());
    }
    Manifest::decode_mox(&mut env).map(drop)
}

/// Every broken variable is refused with the variable, the entry and the fix.
#[test]
fn bad_variables_name_their_culprit() {
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
    ];
    check(cases, 31);
}
