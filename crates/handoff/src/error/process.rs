//! Messages of the errors about starting and supervising the child, its
//! signals and the control socket.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::Control {
            path,
            action,
            source,
        } => write!(f, "control socket {path:?}: cannot {action}: {source}"),
        Error::Spawn {
            program,
            user,
            source,
        } => write!(
            f,
            "cannot start the unprivileged child {program:?} as {user}: {source}"
        ),
        Error::ProgramOpen { program, source } => write!(
            f,
            "cannot open the program {program:?} to start it: {source}; check that the file \
             exists (a spawner resolves its path at start-up: after `mv new-binary` the path \
             must name the new file)"
        ),
        Error::ProgramNotExecutable {
            program,
            user,
            detail,
            fix,
        } => write!(
            f,
            "the program {program:?} cannot be executed by {user}: {detail}; {fix}"
        ),
        Error::Supervise {
            pid,
            operation,
            source,
        } => write!(f, "supervising child {pid}: {operation} failed: {source}"),
        Error::SignalMask { action, source } => write!(
            f,
            "cannot {action} SIGHUP and SIGUSR2 in this thread: pthread_sigmask failed: \
             {source}; a signal mask change fails only on a broken C library, report it"
        ),
        other => write!(f, "{other:?}"),
    }
}
