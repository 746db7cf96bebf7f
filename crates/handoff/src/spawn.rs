//! Starting a child with descriptors placed at 3, 4, ...: the fd mapping
//! done between fork and exec.
//!
//! Between `fork` and `exec` only async-signal-safe calls are allowed: no
//! allocation, no locks, no logging. Everything the closure needs is
//! prepared before the fork.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::env::FIRST_PASSED_FD;

/// How far to mark descriptors close-on-exec when `close_range` is missing
/// and the open-files limit cannot be read.
const FALLBACK_FD_LIMIT: RawFd = 65_536;

/// Arranges for the child of `command` to receive `fds` at 3, 4, ... in
/// order, with every other descriptor above 2 marked close-on-exec, so
/// only stdio and the placed descriptors survive `exec`.
///
/// The mapping is done in two steps so no source is clobbered: first every
/// source is duplicated above the target range (`F_DUPFD_CLOEXEC`), then
/// each copy is `dup2`ed into place (which clears close-on-exec on the
/// target; the copies stay close-on-exec). The descriptors in `fds` must
/// stay open until `command` is spawned.
///
/// If `exec` fails after the mapping, std's internal error pipe may have been
/// replaced by a placed descriptor, so the failure shows as the child exiting
/// with status 1 rather than as a spawn error.
pub fn pass_fds(command: &mut Command, fds: &[BorrowedFd<'_>]) {
    let sources: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let count = RawFd::try_from(sources.len()).unwrap_or(RawFd::MAX - FIRST_PASSED_FD);
    let floor = FIRST_PASSED_FD + count;
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .and_then(|(soft, _)| RawFd::try_from(soft).ok())
        .unwrap_or(FALLBACK_FD_LIMIT);
    let place = move || -> io::Result<()> {
        for (slot, &source) in moved.iter_mut().zip(&sources) {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) is async-signal-safe and creates a
            // new descriptor; `source` was open when the command was built.
            let copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, floor) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            *slot = copy;
        }
        for (target, &copy) in (FIRST_PASSED_FD..).zip(&moved) {
            // SAFETY: dup2 is async-signal-safe; `copy` >= floor > target, so
            // this is never the dup2(fd, fd) no-op that would keep
            // FD_CLOEXEC set, and the new `target` is not close-on-exec.
            if unsafe { libc::dup2(copy, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        close_others_on_exec(floor, limit);
        Ok(())
    };
    // SAFETY: `place` only calls async-signal-safe functions (fcntl, dup2,
    // close_range) and writes into a vector allocated before the fork.
    unsafe {
        command.pre_exec(place);
    }
}

/// Marks every descriptor from `floor` on close-on-exec (async-signal-safe).
fn close_others_on_exec(floor: RawFd, limit: RawFd) {
    let first = u32::try_from(floor).unwrap_or(u32::MAX);
    // SAFETY: close_range(CLOSE_RANGE_CLOEXEC) only sets flags on descriptors
    // in the range; it is a plain system call, async-signal-safe.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: mark each one (EBADF on closed numbers is fine).
        for fd in floor..limit {
            // SAFETY: F_SETFD on any number only changes that descriptor's
            // close-on-exec flag, or fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}
