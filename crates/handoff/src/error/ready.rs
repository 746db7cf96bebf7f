//! Messages of the errors about the readiness channel between a parent and
//! its child.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::ReadyFdMisplaced { var, value, passed } => write!(
            f,
            "{var}={value} but the readiness descriptor must be fd {expected}, the one right \
             after the {passed} passed listeners and files; the variables were edited or written \
             by another program, start this program from its parent unchanged",
            expected = passed.saturating_add(3)
        ),
        Error::NotAReadyChannel { fd, var, found } => write!(
            f,
            "fd {fd} ({var}) is a {found}, not the connected Unix stream socket of the readiness \
             channel; the parent's descriptors are out of order or {var} is wrong, start this \
             program from its parent unchanged"
        ),
        Error::ReadyNotify { fd, source } => write!(
            f,
            "cannot report readiness on fd {fd}: {source}; the parent closed the channel (it \
             gave up waiting, or it exited), so this process will not be made the serving one"
        ),
        Error::ReadyChannel { operation, source } => {
            write!(f, "readiness channel: {operation} failed: {source}")
        }
        Error::BadUpdate { line } => write!(
            f,
            "the parent sent {line:?} on the readiness channel, expected `GENERATION=<g> \
             UPGRADES_OK=<n> UPGRADES_FAILED=<m>`; parent and child are different versions of \
             the protocol, restart the service"
        ),
        Error::NotReady {
            generation,
            pid,
            reason,
        } => write!(
            f,
            "generation {generation} (pid {pid}) did not become ready: {reason}; check its log \
             (it must call ReadyChannel::notify_ready once its listeners accept)"
        ),
        other => write!(f, "{other:?}"),
    }
}
