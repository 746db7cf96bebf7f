//! Messages of the errors about the service user and dropping privileges.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::UnknownUser { user } => write!(
            f,
            "unknown user {user:?}: no such user name or uid in the user database; set `user` to \
             an existing unprivileged account (for example nobody) or create it"
        ),
        Error::UserLookup { user, source } => write!(
            f,
            "cannot look up user {user:?}: {source}; check /etc/passwd and NSS configuration"
        ),
        Error::StillPrivileged { detail } => write!(
            f,
            "refusing to run: the process is meant to be unprivileged but {detail}; start it \
             from the privileged parent with a non-root user"
        ),
        Error::NotSingleThreaded { operation, threads } => write!(
            f,
            "{operation} needs a single-threaded process, but it has {threads} threads; call it \
             first thing in main, right after Handoff::detect and before any other thread (a \
             logger, an async runtime) starts"
        ),
        Error::DropPrivileges { user, step, source } => write!(
            f,
            "cannot drop privileges to {user}: {step} failed: {source}; the process must be root \
             to drop to another user"
        ),
        other => write!(f, "{other:?}"),
    }
}
