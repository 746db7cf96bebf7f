//! Messages of the errors about `listen()` / `open_privileged()` asking for
//! what was not passed, and modes that cannot be used.

use std::fmt;

use super::Error;

/// Writes the message of one of this area's variants.
pub(super) fn fmt(err: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match err {
        Error::NoSuchListener {
            spec,
            mode,
            available,
        } => write!(
            f,
            "no passed listener for {spec} in {mode} mode (passed and not yet taken: \
             {available}); add it to the configuration the parent (or the systemd unit) uses, or \
             take each listener only once"
        ),
        Error::SpecMismatch {
            name,
            passed,
            requested,
        } => write!(
            f,
            "passed listener {name:?} is {passed} but this program asks for {requested}; the \
             configuration changed after the parent bound its sockets, restart the parent"
        ),
        Error::NoActivatedSocket {
            name,
            address,
            available,
        } => write!(
            f,
            "listener {name:?} ({address}) has no socket from systemd (passed and not yet \
             claimed: {available}); give it one: FileDescriptorName={name} and ListenStream= its \
             address in a .socket unit of this service (systemd-socket-activate: -l ADDRESS \
             --fdname={name}), or remove the listener from the configuration"
        ),
        Error::ActivatedSocketMismatch {
            name,
            passed,
            requested,
        } => write!(
            f,
            "the socket systemd passed as {name:?} is bound to {passed}, but listener {name:?} \
             asks for {requested}; make ListenStream= of the .socket unit with \
             FileDescriptorName={name} (systemd-socket-activate: -l) equal the listener's \
             address, or change the address in the configuration"
        ),
        Error::NoSuchFile {
            path,
            mode,
            available,
        } => write!(
            f,
            "no passed file for {path:?} in {mode} mode (passed and not yet taken: {available}); \
             open it in the privileged parent too (the same open_privileged calls in both \
             processes), or open each path only as often as the parent did"
        ),
        Error::ModeUnavailable { mode, reason } => write!(f, "cannot use {mode} mode: {reason}"),
        Error::ThreadsRunning { threads, mode } => write!(
            f,
            "this process has {threads} threads, but taking the {mode} hand-off removes \
             environment variables, which is only sound while the process has one thread: call \
             Handoff::detect first thing in main, before any thread (logger, runtime, thread \
             pool) starts"
        ),
        other => write!(f, "{other:?}"),
    }
}
