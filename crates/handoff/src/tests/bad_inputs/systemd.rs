//! systemd's socket-activation variables (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`).

use super::{case, check, Env};
use crate::error::Error;
use crate::systemd::SystemdManifest;

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

/// Every broken activation variable is refused with its value and the fix.
#[test]
fn bad_systemd_variables_name_their_culprit() {
    use Error as E;
    let cases = vec![
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
    ];
    check(cases, 6);
}
