//! Upgrade candidates start at a lower priority (a raised nice value,
//! optionally `SCHED_IDLE`): a process start runs a
//! few milliseconds of CPU without yielding (exec, loading, runtime
//! set-up), and on a small machine the serving generation's threads and
//! its clients otherwise wait behind it (see BENCHMARKS.md, "Connect-to-
//! greeting during back-to-back upgrades"). Once the candidate is ready
//! the parent sets every one of its threads back; that needs
//! `CAP_SYS_NICE`, so without it candidates start at the normal priority.

use std::fs;
use std::io;

use crate::spawn::{own_nice, set_nice, set_policy, Policy};

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

/// Sets every thread of `pid` to this thread's scheduling policy and nice
/// value; returns how many threads it set.
///
/// Nice values are per thread and a new thread inherits its creator's, so
/// the threads are listed and set until a listing finds no thread that
/// the previous pass did not set: a thread created after that was created
/// by a thread already set. Threads that exit meanwhile are skipped.
pub(super) fn restore(pid: u32) -> io::Result<usize> {
    /// Passes before giving up on a process that keeps starting threads.
    const PASSES: usize = 8;
    let nice = own_nice();
    let policy = Policy::own()?;
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
    fn lists_this_process_threads() {
        let tids = threads(std::process::id()).unwrap();
        assert!(tids.contains(&std::process::id()), "{tids:?}");
    }
}
