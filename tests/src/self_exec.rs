//! Pieces of test binaries that re-execute themselves in several roles
//! (`harness = false`, a role chosen by an environment variable): a
//! deadline for the whole run, the descriptors a child role was left, and
//! a child role's exit status.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use crate::procfs::ProcStats;

/// Ends the process with status 2 once `limit` has passed, naming `test`
/// on standard error: a deadlock must fail the run, not hang it. Call it
/// first in the role that runs the tests; it spawns a thread that sleeps.
pub fn exit_after(test: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{test}: no result after {limit:?}, giving up");
        std::process::exit(2);
    });
}

/// The descriptors open in this process (empty if `/proc` cannot say).
/// The directory read to learn them shows among them.
pub fn open_fds() -> Vec<i32> {
    ProcStats::new(std::process::id())
        .fd_numbers()
        .unwrap_or_default()
}

/// The exit status of a child role that ran to `result`: success, or the
/// error on standard error after `what` (`child failed: …`) and failure.
///
/// ```
/// use std::process::ExitCode;
///
/// assert_eq!(lifecycle_tests::role_exit("child", Ok::<(), String>(())), ExitCode::SUCCESS);
/// assert_eq!(lifecycle_tests::role_exit("child", Err("no socket")), ExitCode::FAILURE);
/// ```
pub fn role_exit(what: &str, result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{what} failed: {err}");
            ExitCode::FAILURE
        }
    }
}
