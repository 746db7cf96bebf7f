//! Messages of the errors about inherited descriptors that are not what
//! their entry declares.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::FdClosed { fd, entry } => write!(
            f,
            "fd {fd} ({entry}) is not open: the parent passed fewer descriptors than it \
             declared; start the program from its privileged parent (or systemd) unchanged"
        ),
        Error::NotASocket { fd, entry, found } => write!(
            f,
            "fd {fd} ({entry}) is a {found}, not a socket; the parent's listeners and files are \
             out of order or the entry is wrong"
        ),
        Error::NotAFile { fd, entry, found } => write!(
            f,
            "fd {fd} ({entry}) is a {found}, not a file; the parent's listeners and files are \
             out of order or the entry is wrong"
        ),
        Error::NotListening { fd, entry } => write!(
            f,
            "fd {fd} ({entry}) is a socket that is not listening (SO_ACCEPTCONN is 0); pass the \
             listening socket, not a connection or an unlistened socket"
        ),
        Error::WrongSocketType { fd, entry, found } => write!(
            f,
            "fd {fd} ({entry}) is a {found} socket, not a stream socket; listeners must be TCP \
             or Unix stream sockets (systemd: ListenStream=)"
        ),
        Error::FamilyMismatch {
            fd,
            entry,
            found,
            declared,
        } => write!(
            f,
            "fd {fd} ({entry}) is a {found} socket but the entry declares {declared}; fix the \
             entry or pass the right socket"
        ),
        Error::AddressMismatch {
            fd,
            entry,
            found,
            declared,
        } => write!(
            f,
            "fd {fd} ({entry}) is bound to {found} but {declared} was declared; the descriptors \
             are out of order or the configuration changed since the parent bound them"
        ),
        Error::UnsupportedAddress { fd, entry, found } => write!(
            f,
            "fd {fd} ({entry}) has local address {found}, which is not supported; bind TCP or a \
             Unix path"
        ),
        Error::FdCheck {
            fd,
            entry,
            operation,
            source,
        } => write!(f, "fd {fd} ({entry}): {operation} failed: {source}"),
        other => write!(f, "{other:?}"),
    }
}
