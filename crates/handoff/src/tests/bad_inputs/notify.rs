//! `NOTIFY_SOCKET` values that cannot be used.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::{case, check, Env};
use crate::error::Error;
use crate::notify::{NotifyEnv, NotifyError};

/// A relative or NUL-holding `NOTIFY_SOCKET` is refused, naming it.
#[test]
fn bad_notify_sockets_name_their_culprit() {
    use Error as E;
    let cases = vec![
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
    check(cases, 2);
}
