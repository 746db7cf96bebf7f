//! The one error type of the crate. Every message names the variable or fd,
//! the offending entry, and what to do about it. The enum is here; its
//! messages are written by area (`error/env.rs`, `fd.rs`, `lookup.rs`,
//! `open.rs`, `privilege.rs`, `process.rs`, `ready.rs`), each variant sent
//! to its area by `error/display.rs`.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::mode::Mode;
use crate::notify::NotifyError;

mod display;
mod env;
mod fd;
mod lookup;
mod open;
mod privilege;
mod process;
mod ready;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while choosing a mode, decoding the hand-off
/// environment, checking inherited descriptors, binding or opening.
///
/// Fields named `entry` describe the offending entry (variable, position and
/// text) so the message alone is enough to find it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control socket could not be set up.
    Control {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A required variable is not set.
    MissingVariable {
        /// The variable.
        var: String,
        /// What to do.
        fix: &'static str,
    },

    /// A variable's value is not valid UTF-8 (the protocol escapes every
    /// byte outside printable ASCII, so a raw non-UTF-8 value is corrupt).
    NotUtf8 {
        /// The variable.
        var: String,
        /// The value, lossily converted for display.
        value: String,
    },

    /// A variable that must hold a number does not.
    NotANumber {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What kind of number was expected.
        expected: &'static str,
        /// What to do.
        fix: &'static str,
    },

    /// An entry of a list variable is empty (two commas in a row, or a
    /// trailing comma).
    EmptyEntry {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The whole value.
        value: String,
    },

    /// An entry holds a `%` not followed by two hex digits, or a byte that
    /// must be escaped but is not.
    BadEscape {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
        /// Byte offset of the problem inside the entry.
        position: usize,
        /// What is wrong there.
        problem: &'static str,
    },

    /// A listener entry is not `name=network:address`.
    BadEntry {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
        /// What is wrong.
        problem: &'static str,
    },

    /// A listener entry names a network other than `tcp` or `unix`.
    UnknownNetwork {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
        /// The network found.
        network: String,
    },

    /// An entry's address (or file path) does not parse.
    BadAddress {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
        /// What is wrong, and what a good one looks like.
        problem: String,
    },

    /// A listener entry's name is not valid UTF-8 once unescaped, or empty.
    BadName {
        /// The variable.
        var: String,
        /// Zero-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
        /// What is wrong.
        problem: &'static str,
    },

    /// Two entries carry the same listener name.
    DuplicateName {
        /// The variable (or `listen()` for a second bind of one name).
        var: String,
        /// The repeated name.
        name: String,
        /// Position of the first entry.
        first: usize,
        /// Position of the second entry.
        second: usize,
    },

    /// The declared number of descriptors does not match the entries.
    FdCountMismatch {
        /// The count variable.
        var: String,
        /// The listener variable.
        sockets_var: String,
        /// The file variable.
        files_var: String,
        /// The declared count.
        declared: usize,
        /// The number of entries found.
        entries: usize,
    },

    /// The hand-off variables were written by a process that is not this
    /// process's parent (a grandchild inherited them).
    WrongParent {
        /// The parent-pid variable.
        var: String,
        /// The pid it names.
        value: u32,
        /// Our actual parent pid.
        actual: u32,
    },

    /// `LISTEN_PID` names another process.
    WrongListenPid {
        /// The pid in `LISTEN_PID`.
        value: u32,
        /// Our pid.
        actual: u32,
    },

    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS`.
    FdNamesCount {
        /// The `LISTEN_FDNAMES` value.
        names: String,
        /// How many names it holds.
        count: usize,
        /// The `LISTEN_FDS` value.
        fds: usize,
    },

    /// A descriptor the hand-off declares is not open.
    FdClosed {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
    },

    /// A socket was declared but the descriptor is something else.
    NotASocket {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// What it is.
        found: &'static str,
    },

    /// A file was declared but the descriptor is a socket or directory.
    NotAFile {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// What it is.
        found: &'static str,
    },

    /// The socket is not listening (SO_ACCEPTCONN is 0).
    NotListening {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
    },

    /// The socket is not a stream socket.
    WrongSocketType {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The socket type found.
        found: String,
    },

    /// The socket's address family does not match the declared network.
    FamilyMismatch {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The family found.
        found: String,
        /// The declared network.
        declared: String,
    },

    /// The socket is bound to another address than declared.
    AddressMismatch {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The address the socket is bound to.
        found: String,
        /// The declared address.
        declared: String,
    },

    /// The socket's local address cannot be expressed as a listener address
    /// (an abstract or unnamed Unix socket).
    UnsupportedAddress {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The address found.
        found: String,
    },

    /// A system call on an inherited descriptor failed.
    FdCheck {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The operation.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `listen()` asked for a listener the hand-off does not hold.
    NoSuchListener {
        /// The requested listener.
        spec: String,
        /// The mode.
        mode: Mode,
        /// What is still available.
        available: String,
    },

    /// A passed listener with the requested name has another address.
    SpecMismatch {
        /// The listener name.
        name: String,
        /// What was passed.
        passed: String,
        /// What was requested.
        requested: String,
    },

    /// systemd mode: no socket-activated descriptor is named like a
    /// listener of the program, and none unnamed is bound to its address.
    NoActivatedSocket {
        /// The listener's name (the config's).
        name: String,
        /// The address it asks for.
        address: String,
        /// The activated sockets still unclaimed.
        available: String,
    },

    /// systemd mode: the socket named for a listener is bound to another
    /// address than the listener asks for.
    ActivatedSocketMismatch {
        /// The listener's name, which is also the socket's.
        name: String,
        /// Where the activated socket is bound.
        passed: String,
        /// What the listener asks for.
        requested: String,
    },

    /// `open_privileged()` asked for a file the hand-off does not hold.
    NoSuchFile {
        /// The requested path.
        path: PathBuf,
        /// The mode.
        mode: Mode,
        /// What is still available.
        available: String,
    },

    /// Binding a listener failed.
    Bind {
        /// The listener.
        spec: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Opening a privileged file failed.
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A secret file to open is not a regular file (a FIFO, a device, a
    /// directory...).
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        found: &'static str,
    },

    /// A secret file opened as root sits where someone other than root
    /// could change what the path names (see [`open_file`](crate::open_file)).
    UnsafeSecretPath {
        /// The path as given.
        path: PathBuf,
        /// The file or directory at fault.
        culprit: PathBuf,
        /// `file` or `directory`.
        what: &'static str,
        /// Who can write it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },

    /// The path of a secret file named another file after it was opened
    /// and checked (it was replaced in between).
    SecretPathChanged {
        /// The path as given.
        path: PathBuf,
        /// The path it resolved to.
        resolved: PathBuf,
    },

    /// Duplicating a descriptor to keep a copy for the child failed.
    Dup {
        /// What was duplicated.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The chosen mode cannot be used in this situation.
    ModeUnavailable {
        /// The mode.
        mode: Mode,
        /// Why, and what to do.
        reason: String,
    },

    /// The variable prefix is not usable in variable names.
    BadPrefix {
        /// The prefix given.
        prefix: String,
    },

    /// The configured user does not exist.
    UnknownUser {
        /// The user as configured.
        user: String,
    },

    /// Looking up the configured user failed.
    UserLookup {
        /// The user as configured.
        user: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The unprivileged child could regain root.
    StillPrivileged {
        /// What shows the privilege.
        detail: String,
    },

    /// An operation that must run while the process has one thread found
    /// more.
    NotSingleThreaded {
        /// What was to be done.
        operation: &'static str,
        /// How many threads there are.
        threads: usize,
    },

    /// A step of dropping privileges in place failed.
    DropPrivileges {
        /// The target user.
        user: String,
        /// The step that failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Spawning the unprivileged child failed.
    Spawn {
        /// The program.
        program: PathBuf,
        /// The user it was to run as.
        user: String,
        /// The OS error (from fork, exec or the set-up before exec).
        #[source]
        source: io::Error,
    },

    /// The program to start could not be opened (by the parent, before the
    /// fork).
    ProgramOpen {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The program's own mode does not let the child's user execute it.
    ProgramNotExecutable {
        /// The program.
        program: PathBuf,
        /// The user the child was to run as.
        user: String,
        /// What is wrong with the file.
        detail: String,
        /// What to do.
        fix: String,
    },

    /// [`Handoff::detect`](crate::Handoff::detect) was to remove hand-off
    /// variables from the environment while other threads run.
    ThreadsRunning {
        /// The number of threads found (`Threads:` in `/proc/self/status`).
        threads: usize,
        /// The mode whose variables were to be removed.
        mode: Mode,
    },

    /// Waiting for the child or forwarding a signal failed.
    Supervise {
        /// The child's pid.
        pid: u32,
        /// The operation.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The announced readiness descriptor is not where the protocol puts it
    /// (right after the listeners and files).
    ReadyFdMisplaced {
        /// The ready-fd variable.
        var: String,
        /// The number it holds.
        value: u64,
        /// How many listeners and files were passed before it.
        passed: usize,
    },

    /// The readiness descriptor is not a connected Unix stream socket.
    NotAReadyChannel {
        /// The descriptor number.
        fd: RawFd,
        /// The ready-fd variable.
        var: String,
        /// What the descriptor is.
        found: String,
    },

    /// Writing the ready message failed (the parent went away or closed
    /// its end).
    ReadyNotify {
        /// The descriptor number.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The calling thread's signal mask could not be changed (see
    /// [`HeldSignals`](crate::HeldSignals)).
    SignalMask {
        /// `block` or `unblock`.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A system call on the parent's end of a readiness channel failed.
    ReadyChannel {
        /// The operation.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The parent sent a counters line that does not parse.
    BadUpdate {
        /// The line received (lossily decoded, at most 4 KiB).
        line: String,
    },

    /// A started child (the first one, or a successor) did not become ready.
    NotReady {
        /// The child's generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// What happened instead (exited, timed out, closed the channel).
        reason: String,
    },

    /// `NOTIFY_SOCKET` (or the watchdog variables) could not be used: see
    /// [`NotifyError`].
    #[error(transparent)]
    Notify(#[from] NotifyError),
}
