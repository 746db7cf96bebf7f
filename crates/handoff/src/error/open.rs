//! Messages of the errors about binding listeners and opening secret files.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::Bind { spec, source } => write!(
            f,
            "cannot bind listener {spec}: {source}; check that the address is free and that this \
             process may bind it"
        ),
        Error::Open { path, source } => write!(
            f,
            "cannot open {path:?}: {source}; check the path and that this process may read it"
        ),
        Error::NotRegularFile { path, found } => write!(
            f,
            "cannot use {path:?} as a secret file: it is a {found}, not a regular file; put the \
             key or certificate file itself there (a FIFO would block the process opening it)"
        ),
        Error::UnsafeSecretPath {
            path,
            culprit,
            what,
            problem,
            fix,
        } => write!(
            f,
            "refusing to open {path:?} as root: the {what} {culprit:?} {problem}, so root could \
             be made to open another file in its place and hand it to the service; fix: {fix}"
        ),
        Error::SecretPathChanged { path, resolved } => write!(
            f,
            "{path:?} (resolved to {resolved:?}) changed while it was opened and checked: it now \
             names another file; retry, and find out who replaces it"
        ),
        Error::Dup { what, source } => write!(
            f,
            "cannot duplicate the descriptor of {what} to keep a copy for the child: {source}; \
             raise the open-files limit"
        ),
        other => write!(f, "{other:?}"),
    }
}
