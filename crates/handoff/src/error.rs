//! The one error type of the crate. Every message names the variable or fd,
//! the offending entry, and what to do about it.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::mode::Mode;
use crate::notify::NotifyError;

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
    #[error("control socket {path:?}: cannot {action}: {source}")]
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
    #[error("environment variable {var} is not set: {fix}")]
    MissingVariable {
        /// The variable.
        var: String,
        /// What to do.
        fix: &'static str,
    },

    /// A variable's value is not valid UTF-8 (the protocol escapes every
    /// byte outside printable ASCII, so a raw non-UTF-8 value is corrupt).
    #[error(
        "environment variable {var} is not valid UTF-8 ({value:?}): the hand-off protocol \
         percent-escapes every non-ASCII byte, so this value was not written by it; unset {var} \
         or let the parent write it"
    )]
    NotUtf8 {
        /// The variable.
        var: String,
        /// The value, lossily converted for display.
        value: String,
    },

    /// A variable that must hold a number does not.
    #[error("environment variable {var}={value:?} is not a {expected}: {fix}")]
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
    #[error(
        "environment variable {var}: entry {index} is empty (two commas in a row or a \
         trailing comma in {value:?}); every entry must name something, fix the program that \
         wrote {var}"
    )]
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
    #[error(
        "environment variable {var}: entry {index} {entry:?} has a bad escape at byte {position} \
         ({problem}); write `%` as %25 and every byte outside [A-Za-z0-9-._~/:@+[]] as %XX"
    )]
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
    #[error(
        "environment variable {var}: entry {index} {entry:?} is not of the form \
         name=network:address ({problem})"
    )]
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
    #[error(
        "environment variable {var}: entry {index} {entry:?} has unknown network {network:?}; \
         use tcp or unix"
    )]
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
    #[error("environment variable {var}: entry {index} {entry:?} has a bad address: {problem}")]
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
    #[error(
        "environment variable {var}: entry {index} {entry:?} has a bad listener name: {problem}"
    )]
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
    #[error(
        "{var}: listener name {name:?} appears twice (entries {first} and {second}); listener \
         names must be unique, rename one in the configuration"
    )]
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
    #[error(
        "{var}={declared} but {sockets_var} and {files_var} hold {entries} entries; the \
         variables were truncated or edited, restart the program from its privileged parent"
    )]
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
    #[error(
        "{var}={value} but this process's parent is {actual}: the hand-off variables were meant \
         for another process and its descriptors are not ours; unset {var} and the other \
         hand-off variables before starting this program"
    )]
    WrongParent {
        /// The parent-pid variable.
        var: String,
        /// The pid it names.
        value: u32,
        /// Our actual parent pid.
        actual: u32,
    },

    /// `LISTEN_PID` names another process.
    #[error(
        "LISTEN_PID={value} but this process is {actual}: systemd's socket-activation \
         variables were meant for another process; unset LISTEN_PID, LISTEN_FDS and \
         LISTEN_FDNAMES before starting this program"
    )]
    WrongListenPid {
        /// The pid in `LISTEN_PID`.
        value: u32,
        /// Our pid.
        actual: u32,
    },

    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS`.
    #[error(
        "LISTEN_FDNAMES={names:?} holds {count} names but LISTEN_FDS={fds}; give every socket \
         of the unit one FileDescriptorName= (or none at all)"
    )]
    FdNamesCount {
        /// The `LISTEN_FDNAMES` value.
        names: String,
        /// How many names it holds.
        count: usize,
        /// The `LISTEN_FDS` value.
        fds: usize,
    },

    /// A descriptor the hand-off declares is not open.
    #[error(
        "fd {fd} ({entry}) is not open: the parent passed fewer descriptors than it declared; \
         start the program from its privileged parent (or systemd) unchanged"
    )]
    FdClosed {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
    },

    /// A socket was declared but the descriptor is something else.
    #[error(
        "fd {fd} ({entry}) is a {found}, not a socket; the parent's listeners and files are out \
         of order or the entry is wrong"
    )]
    NotASocket {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// What it is.
        found: &'static str,
    },

    /// A file was declared but the descriptor is a socket or directory.
    #[error(
        "fd {fd} ({entry}) is a {found}, not a file; the parent's listeners and files are out \
         of order or the entry is wrong"
    )]
    NotAFile {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// What it is.
        found: &'static str,
    },

    /// The socket is not listening (SO_ACCEPTCONN is 0).
    #[error(
        "fd {fd} ({entry}) is a socket that is not listening (SO_ACCEPTCONN is 0); pass the \
         listening socket, not a connection or an unlistened socket"
    )]
    NotListening {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
    },

    /// The socket is not a stream socket.
    #[error(
        "fd {fd} ({entry}) is a {found} socket, not a stream socket; listeners must be TCP or \
         Unix stream sockets (systemd: ListenStream=)"
    )]
    WrongSocketType {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The socket type found.
        found: String,
    },

    /// The socket's address family does not match the declared network.
    #[error(
        "fd {fd} ({entry}) is a {found} socket but the entry declares {declared}; fix the \
         entry or pass the right socket"
    )]
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
    #[error(
        "fd {fd} ({entry}) is bound to {found} but {declared} was declared; the descriptors \
         are out of order or the configuration changed since the parent bound them"
    )]
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
    #[error("fd {fd} ({entry}) has local address {found}, which is not supported; bind TCP or a Unix path")]
    UnsupportedAddress {
        /// The descriptor number.
        fd: RawFd,
        /// Which entry declared it.
        entry: String,
        /// The address found.
        found: String,
    },

    /// A system call on an inherited descriptor failed.
    #[error("fd {fd} ({entry}): {operation} failed: {source}")]
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
    #[error(
        "no passed listener for {spec} in {mode} mode (passed and not yet taken: {available}); \
         add it to the configuration the parent (or the systemd unit) uses, or take each \
         listener only once"
    )]
    NoSuchListener {
        /// The requested listener.
        spec: String,
        /// The mode.
        mode: Mode,
        /// What is still available.
        available: String,
    },

    /// A passed listener with the requested name has another address.
    #[error(
        "passed listener {name:?} is {passed} but this program asks for {requested}; the \
         configuration changed after the parent bound its sockets, restart the parent"
    )]
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
    #[error(
        "listener {name:?} ({address}) has no socket from systemd (passed and not yet claimed: \
         {available}); give it one: FileDescriptorName={name} and ListenStream= its address in a \
         .socket unit of this service (systemd-socket-activate: -l ADDRESS --fdname={name}), or \
         remove the listener from the configuration"
    )]
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
    #[error(
        "the socket systemd passed as {name:?} is bound to {passed}, but listener {name:?} asks \
         for {requested}; make ListenStream= of the .socket unit with FileDescriptorName={name} \
         (systemd-socket-activate: -l) equal the listener's address, or change the address in \
         the configuration"
    )]
    ActivatedSocketMismatch {
        /// The listener's name, which is also the socket's.
        name: String,
        /// Where the activated socket is bound.
        passed: String,
        /// What the listener asks for.
        requested: String,
    },

    /// `open_privileged()` asked for a file the hand-off does not hold.
    #[error(
        "no passed file for {path:?} in {mode} mode (passed and not yet taken: {available}); \
         open it in the privileged parent too (the same open_privileged calls in both \
         processes), or open each path only as often as the parent did"
    )]
    NoSuchFile {
        /// The requested path.
        path: PathBuf,
        /// The mode.
        mode: Mode,
        /// What is still available.
        available: String,
    },

    /// Binding a listener failed.
    #[error("cannot bind listener {spec}: {source}; check that the address is free and that this process may bind it")]
    Bind {
        /// The listener.
        spec: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Opening a privileged file failed.
    #[error("cannot open {path:?}: {source}; check the path and that this process may read it")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A secret file to open is not a regular file (a FIFO, a device, a
    /// directory...).
    #[error(
        "cannot use {path:?} as a secret file: it is a {found}, not a regular file; put the \
         key or certificate file itself there (a FIFO would block the process opening it)"
    )]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        found: &'static str,
    },

    /// A secret file opened as root sits where someone other than root
    /// could change what the path names (see [`open_file`](crate::open_file)).
    #[error(
        "refusing to open {path:?} as root: the {what} {culprit:?} {problem}, so root could be \
         made to open another file in its place and hand it to the service; fix: {fix}"
    )]
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
    #[error(
        "{path:?} (resolved to {resolved:?}) changed while it was opened and checked: it now \
         names another file; retry, and find out who replaces it"
    )]
    SecretPathChanged {
        /// The path as given.
        path: PathBuf,
        /// The path it resolved to.
        resolved: PathBuf,
    },

    /// Duplicating a descriptor to keep a copy for the child failed.
    #[error("cannot duplicate the descriptor of {what} to keep a copy for the child: {source}; raise the open-files limit")]
    Dup {
        /// What was duplicated.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The chosen mode cannot be used in this situation.
    #[error("cannot use {mode} mode: {reason}")]
    ModeUnavailable {
        /// The mode.
        mode: Mode,
        /// Why, and what to do.
        reason: String,
    },

    /// The variable prefix is not usable in variable names.
    #[error(
        "hand-off variable prefix {prefix:?} is not usable: use a non-empty prefix of \
         A-Z, 0-9 and _ (default LIFECYCLE)"
    )]
    BadPrefix {
        /// The prefix given.
        prefix: String,
    },

    /// The configured user does not exist.
    #[error(
        "unknown user {user:?}: no such user name or uid in the user database; set `user` to an \
         existing unprivileged account (for example nobody) or create it"
    )]
    UnknownUser {
        /// The user as configured.
        user: String,
    },

    /// Looking up the configured user failed.
    #[error("cannot look up user {user:?}: {source}; check /etc/passwd and NSS configuration")]
    UserLookup {
        /// The user as configured.
        user: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The unprivileged child could regain root.
    #[error(
        "refusing to run: the process is meant to be unprivileged but {detail}; start it from \
         the privileged parent with a non-root user"
    )]
    StillPrivileged {
        /// What shows the privilege.
        detail: String,
    },

    /// An operation that must run while the process has one thread found
    /// more.
    #[error(
        "{operation} needs a single-threaded process, but it has {threads} threads; call it \
         first thing in main, right after Handoff::detect and before any other thread (a \
         logger, an async runtime) starts"
    )]
    NotSingleThreaded {
        /// What was to be done.
        operation: &'static str,
        /// How many threads there are.
        threads: usize,
    },

    /// A step of dropping privileges in place failed.
    #[error("cannot drop privileges to {user}: {step} failed: {source}; the process must be root to drop to another user")]
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
    #[error("cannot start the unprivileged child {program:?} as {user}: {source}")]
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
    #[error(
        "cannot open the program {program:?} to start it: {source}; check that the file exists \
         (a spawner resolves its path at start-up: after `mv new-binary` the path must name the \
         new file)"
    )]
    ProgramOpen {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The program's own mode does not let the child's user execute it.
    #[error("the program {program:?} cannot be executed by {user}: {detail}; {fix}")]
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
    #[error(
        "this process has {threads} threads, but taking the {mode} hand-off removes environment \
         variables, which is only sound while the process has one thread: call Handoff::detect \
         first thing in main, before any thread (logger, runtime, thread pool) starts"
    )]
    ThreadsRunning {
        /// The number of threads found (`Threads:` in `/proc/self/status`).
        threads: usize,
        /// The mode whose variables were to be removed.
        mode: Mode,
    },

    /// Waiting for the child or forwarding a signal failed.
    #[error("supervising child {pid}: {operation} failed: {source}")]
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
    #[error(
        "{var}={value} but the readiness descriptor must be fd {expected}, the one right after \
         the {passed} passed listeners and files; the variables were edited or written by \
         another program, start this program from its parent unchanged",
        expected = .passed.saturating_add(3)
    )]
    ReadyFdMisplaced {
        /// The ready-fd variable.
        var: String,
        /// The number it holds.
        value: u64,
        /// How many listeners and files were passed before it.
        passed: usize,
    },

    /// The readiness descriptor is not a connected Unix stream socket.
    #[error(
        "fd {fd} ({var}) is a {found}, not the connected Unix stream socket of the readiness \
         channel; the parent's descriptors are out of order or {var} is wrong, start this \
         program from its parent unchanged"
    )]
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
    #[error(
        "cannot report readiness on fd {fd}: {source}; the parent closed the channel (it gave \
         up waiting, or it exited), so this process will not be made the serving one"
    )]
    ReadyNotify {
        /// The descriptor number.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The calling thread's signal mask could not be changed (see
    /// [`HeldSignals`](crate::HeldSignals)).
    #[error(
        "cannot {action} SIGHUP and SIGUSR2 in this thread: pthread_sigmask failed: {source}; \
         a signal mask change fails only on a broken C library, report it"
    )]
    SignalMask {
        /// `block` or `unblock`.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A system call on the parent's end of a readiness channel failed.
    #[error("readiness channel: {operation} failed: {source}")]
    ReadyChannel {
        /// The operation.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The parent sent a counters line that does not parse.
    #[error(
        "the parent sent {line:?} on the readiness channel, expected \
         `GENERATION=<g> UPGRADES_OK=<n> UPGRADES_FAILED=<m>`; parent and child are different \
         versions of the protocol, restart the service"
    )]
    BadUpdate {
        /// The line received (lossily decoded, at most 4 KiB).
        line: String,
    },

    /// A started child (the first one, or a successor) did not become ready.
    #[error(
        "generation {generation} (pid {pid}) did not become ready: {reason}; check its log \
         (it must call ReadyChannel::notify_ready once its listeners accept)"
    )]
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
