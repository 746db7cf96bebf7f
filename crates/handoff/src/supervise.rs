//! The privileged parent's only job once the child runs: forward signals
//! to it, wait for it, and report its status.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use crate::child_process::ChildProcess;
use crate::error::{Error, Result};

/// The signals the parent forwards to the child: SIGTERM, SIGINT, SIGHUP,
/// SIGUSR2 (as numbers).
pub const FORWARDED_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

/// The exit code a shell would report for `status`: the exit code, or
/// 128 + the signal number for a child killed by a signal.
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
/// use lifecycle_handoff::exit_code;
///
/// assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
/// assert_eq!(exit_code(ExitStatus::from_raw(9)), 137); // SIGKILL
/// ```
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Forwards [`FORWARDED_SIGNALS`] to the child and waits for it.
///
/// For zero-downtime upgrades on SIGHUP/SIGUSR2 (instead of forwarding
/// them), use [`UpgradeSupervisor`](crate::UpgradeSupervisor).
///
/// Creating it blocks those signals and `SIGCHLD` in the calling thread;
/// threads started afterwards inherit the mask. Create it in the main
/// thread, before other threads exist and before spawning the child, so
/// no signal is lost or takes its default action in between
/// ([`ChildSpawner`](crate::ChildSpawner) clears the child's mask; std's
/// `Command` does not). Dropping it restores the
/// previous mask.
#[derive(Debug)]
pub struct Supervisor {
    waited: SigSet,
    previous: SigSet,
}

/// Sets `SIGCHLD` to its default disposition. An ignored `SIGCHLD` is
/// inherited across exec (a process manager or a wrapper script may start
/// the parent so); with it the kernel reaps children itself and queues no
/// `SIGCHLD`, so a supervisor would never learn that its child exited.
pub(crate) fn default_sigchld() -> Result<()> {
    use nix::sys::signal::SigHandler;
    // SAFETY: SIG_DFL installs no handler, so no code runs in signal
    // context; the disposition is process-wide, as it must be for the
    // supervisor, which owns its children's exits.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map(drop)
        .map_err(|errno| Error::Supervise {
            pid: 0,
            operation: "signal(SIGCHLD, SIG_DFL)",
            source: io::Error::from(errno),
        })
}

impl Supervisor {
    /// Blocks the forwarded signals and `SIGCHLD` in this thread, and sets
    /// `SIGCHLD` to its default disposition (an inherited "ignore" would
    /// hide the child's exit).
    pub fn new() -> Result<Self> {
        default_sigchld()?;
        let mut waited = SigSet::empty();
        for signal in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
        ] {
            waited.add(signal);
        }
        waited.add(Signal::SIGCHLD);
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&waited),
            Some(&mut previous),
        )
        .map_err(|errno| Error::Supervise {
            pid: 0,
            operation: "pthread_sigmask",
            source: io::Error::from(errno),
        })?;
        Ok(Supervisor { waited, previous })
    }

    /// Forwards signals to `child` until it exits; returns its
    /// [`exit_code`] (128 + signal for a child killed by a signal).
    pub fn wait(&self, child: &mut ChildProcess) -> Result<i32> {
        let pid = child.id();
        let fail = |operation| {
            move |source: io::Error| Error::Supervise {
                pid,
                operation,
                source,
            }
        };
        let target = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        loop {
            if let Some(status) = child.try_wait().map_err(fail("waitpid"))? {
                return Ok(exit_code(status));
            }
            // A SIGCHLD that arrived before this call is pending, so an exit
            // is never missed.
            let signal = self
                .waited
                .wait()
                .map_err(|errno| fail("sigwait")(io::Error::from(errno)))?;
            if signal != Signal::SIGCHLD {
                match kill(target, signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(errno) => return Err(fail("kill")(io::Error::from(errno))),
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Restoring the mask cannot meaningfully fail; nothing to report.
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}
