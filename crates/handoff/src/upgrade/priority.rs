//! Upgrade candidates start at a lower priority (a raised nice value,
//! optionally `SCHED_IDLE`): a process start runs a
//! few milliseconds of CPU without yielding (exec, loading, runtime
//! set-up), and on a small machine the serving generation's threads and
//! its clients otherwise wait behind it (see BENCHMARKS.md, "Connect-to-
//! greeting during back-to-back upgrades"). Once the candidate is ready
//! the parent sets every one of its threads back; that needs
//! `CAP_SYS_NICE`, so without it candidates start at the normal priority.
//!
//! With `SCHED_IDLE` the parent also does its own share of an upgrade
//! (reading and answering the control request, re-opening files, binding
//! the candidate's control endpoint, the spawn, the promote and the events
//! it logs: a few hundred microseconds of CPU) under `SCHED_IDLE`
//! ([`IdleWhile`]), so that a serving thread that wakes on its CPU does
//! not wait behind it.

use std::fs;
use std::io;

pub(super) use crate::spawn::Policy;
use crate::spawn::{own_nice, set_nice, set_policy};

/// The `CAP_SYS_NICE` capability's bit in `/proc/self/status`'s `CapEff`.
const CAP_SYS_NICE: u32 = 23;

/// Why this process cannot lower a child's nice value again, if it cannot.
pub(super) fn cannot_restore() -> Option<String> {
    let status = match fs::read_to_string("/proc/self/status") {
        Ok(status) => status,
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    };
    match effective_caps(&status) {
        Some(caps) if caps & (1 << CAP_SYS_NICE) != 0 => None,
        Some(_) => Some(
            "this process lacks CAP_SYS_NICE, which setting a started child back to the \
             normal priority needs"
                .to_owned(),
        ),
        None => Some("no CapEff line in /proc/self/status".to_owned()),
    }
}

/// The effective capability set from the text of `/proc/<pid>/status`.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The thread ids of process `pid`, sorted.
fn threads(pid: u32) -> io::Result<Vec<libc::id_t>> {
    let mut tids: Vec<libc::id_t> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The calling thread under `SCHED_IDLE` until [`leave`](Self::leave) (or
/// drop), then back to the policy it had. A thread already under
/// `SCHED_IDLE` is left as it is, so nested guards leave it to the
/// outermost one.
///
/// Entering yields the CPU once: changing a running thread's policy need
/// not make the kernel switch away from it (it compares priorities, and
/// `SCHED_OTHER` and `SCHED_IDLE` at one nice value share one), so a
/// serving thread already queued behind it on its CPU could wait until the
/// scheduler's next decision; a thread that wakes afterwards preempts it
/// at once.
#[derive(Debug)]
pub(super) struct IdleWhile {
    /// The policy and nice value to go back to; `None` when the thread
    /// was left as it was.
    normal: Option<(Policy, i32)>,
}

impl IdleWhile {
    /// Lowers the calling thread when `on`; a thread whose policy cannot
    /// be read or set stays as it is (the upgrade goes on regardless).
    pub(super) fn enter(on: bool) -> IdleWhile {
        let normal = on
            .then(|| Some((Policy::own().ok()?, own_nice())))
            .flatten()
            .filter(|(policy, _)| *policy != Policy::idle())
            .filter(|_| set_policy(0, Policy::idle()).is_ok());
        if normal.is_some() {
            std::thread::yield_now();
        }
        IdleWhile { normal }
    }

    #[cfg(test)]
    /// Whether this guard lowered the thread (false: off, already under
    /// `SCHED_IDLE`, or the policy could not be set).
    pub(super) fn lowered(&self) -> bool {
        self.normal.is_some()
    }

    /// Sets the thread back; the error when it could not be (it then
    /// stays under `SCHED_IDLE`: leaving it needs `CAP_SYS_NICE`, which the
    /// supervisor checked before it enabled the start priority).
    pub(super) fn leave(mut self) -> io::Result<()> {
        match self.normal.take() {
            Some((policy, nice)) => set_policy(0, policy).and_then(|()| set_nice(0, nice)),
            None => Ok(()),
        }
    }
}

impl Drop for IdleWhile {
    fn drop(&mut self) {
        if let Some((policy, nice)) = self.normal.take() {
            // Only on an early return; `leave` reports the error otherwise.
            let _ = set_policy(0, policy).and_then(|()| set_nice(0, nice));
        }
    }
}

/// Sets every thread of `pid` to the scheduling policy and nice value
/// `normal` (by default this thread's own); returns how many threads it
/// set.
///
/// Nice values are per thread and a new thread inherits its creator's, so
/// the threads are listed and set until a listing finds no thread that
/// the previous pass did not set: a thread created after that was created
/// by a thread already set. Threads that exit meanwhile are skipped.
pub(super) fn restore(pid: u32, normal: Option<(Policy, i32)>) -> io::Result<usize> {
    /// Passes before giving up on a process that keeps starting threads.
    const PASSES: usize = 8;
    let (policy, nice) = match normal {
        Some(normal) => normal,
        None => (Policy::own()?, own_nice()),
    };
    let mut done: Vec<libc::id_t> = Vec::new();
    for _ in 0..PASSES {
        let tids = threads(pid)?;
        if !tids.is_empty() && tids.iter().all(|t| done.binary_search(t).is_ok()) {
            return Ok(done.len());
        }
        for &tid in &tids {
            // Thread ids from /proc fit a pid_t (pid_max is at most 2^22).
            let Ok(thread) = libc::pid_t::try_from(tid) else {
                continue;
            };
            let set = set_policy(thread, policy).and_then(|()| set_nice(tid, nice));
            match set {
                Ok(()) => {}
                // Exited since the listing.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        done = tids;
    }
    Err(io::Error::other(format!(
        "process {pid} kept starting threads through {PASSES} passes"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t0000000000800000\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_SYS_NICE));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn idle_while_lowers_this_thread_and_sets_it_back() {
        std::thread::spawn(|| {
            let before = Policy::own().unwrap();
            let idle = IdleWhile::enter(true);
            assert!(idle.lowered(), "entering SCHED_IDLE needs no privilege");
            assert_eq!(Policy::own().unwrap(), Policy::idle());
            let inner = IdleWhile::enter(true);
            assert!(!inner.lowered(), "nested: left to the outer guard");
            inner.leave().unwrap();
            assert_eq!(Policy::own().unwrap(), Policy::idle(), "nested: still idle");
            match idle.leave() {
                Ok(()) => assert_eq!(Policy::own().unwrap(), before),
                // Leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            }
            let now = Policy::own().unwrap();
            let off = IdleWhile::enter(false);
            assert!(!off.lowered());
            assert_eq!(Policy::own().unwrap(), now, "off: left as it was");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lists_this_process_threads() {
        let tids = threads(std::process::id()).unwrap();
        assert!(tids.contains(&std::process::id()), "{tids:?}");
    }
}
