//! Messages of the errors about hand-off variables (ours and systemd's):
//! missing, malformed, or meant for another process.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::MissingVariable { var, fix } => {
            write!(f, "environment variable {var} is not set: {fix}")
        }
        Error::NotUtf8 { var, value } => write!(
            f,
            "environment variable {var} is not valid UTF-8 ({value:?}): the hand-off protocol \
             percent-escapes every non-ASCII byte, so this value was not written by it; unset \
             {var} or let the parent write it"
        ),
        Error::NotANumber {
            var,
            value,
            expected,
            fix,
        } => write!(
            f,
            "environment variable {var}={value:?} is not a {expected}: {fix}"
        ),
        Error::EmptyEntry { var, index, value } => write!(
            f,
            "environment variable {var}: entry {index} is empty (two commas in a row or a \
             trailing comma in {value:?}); every entry must name something, fix the program that \
             wrote {var}"
        ),
        Error::BadEscape {
            var,
            index,
            entry,
            position,
            problem,
        } => write!(
            f,
            "environment variable {var}: entry {index} {entry:?} has a bad escape at byte \
             {position} ({problem}); write `%` as %25 and every byte outside \
             [A-Za-z0-9-._~/:@+[]] as %XX"
        ),
        Error::BadEntry {
            var,
            index,
            entry,
            problem,
        } => write!(
            f,
            "environment variable {var}: entry {index} {entry:?} is not of the form \
             name=network:address ({problem})"
        ),
        Error::UnknownNetwork {
            var,
            index,
            entry,
            network,
        } => write!(
            f,
            "environment variable {var}: entry {index} {entry:?} has unknown network \
             {network:?}; use tcp or unix"
        ),
        Error::BadAddress {
            var,
            index,
            entry,
            problem,
        } => write!(
            f,
            "environment variable {var}: entry {index} {entry:?} has a bad address: {problem}"
        ),
        Error::BadName {
            var,
            index,
            entry,
            problem,
        } => write!(
            f,
            "environment variable {var}: entry {index} {entry:?} has a bad listener name: \
             {problem}"
        ),
        Error::DuplicateName {
            var,
            name,
            first,
            second,
        } => write!(
            f,
            "{var}: listener name {name:?} appears twice (entries {first} and {second}); \
             listener names must be unique, rename one in the configuration"
        ),
        Error::FdCountMismatch {
            var,
            sockets_var,
            files_var,
            declared,
            entries,
        } => write!(
            f,
            "{var}={declared} but {sockets_var} and {files_var} hold {entries} entries; the \
             variables were truncated or edited, restart the program from its privileged parent"
        ),
        Error::WrongParent { var, value, actual } => write!(
            f,
            "{var}={value} but this process's parent is {actual}: the hand-off variables were \
             meant for another process and its descriptors are not ours; unset {var} and the \
             other hand-off variables before starting this program"
        ),
        Error::WrongListenPid { value, actual } => write!(
            f,
            "LISTEN_PID={value} but this process is {actual}: systemd's socket-activation \
             variables were meant for another process; unset LISTEN_PID, LISTEN_FDS and \
             LISTEN_FDNAMES before starting this program"
        ),
        Error::FdNamesCount { names, count, fds } => write!(
            f,
            "LISTEN_FDNAMES={names:?} holds {count} names but LISTEN_FDS={fds}; give every \
             socket of the unit one FileDescriptorName= (or none at all)"
        ),
        Error::BadPrefix { prefix } => write!(
            f,
            "hand-off variable prefix {prefix:?} is not usable: use a non-empty prefix of A-Z, \
             0-9 and _ (default LIFECYCLE)"
        ),
        other => write!(f, "{other:?}"),
    }
}
