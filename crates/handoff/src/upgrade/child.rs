//! The children the upgrade supervisor tracks: a running generation, a
//! candidate that has not reported ready yet, and a candidate that was told
//! to stop without ever serving as the main child.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::relay::Endpoint;
use crate::child_process::ChildProcess;
use crate::ready::ReadyReceiver;

/// A running child and its generation.
#[derive(Debug)]
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) child: ChildProcess,
    /// The readiness channel, kept while this generation serves to send it
    /// the parent's counters.
    pub(super) channel: Option<ReadyReceiver>,
    /// Its own control endpoint (bound by the parent; removed with it).
    pub(super) endpoint: Option<Endpoint>,
}

impl Generation {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        // ESRCH (already gone, not yet reaped) is fine; nothing else can
        // fail for our own child.
        let _ = kill(pid, signal);
    }

    /// Kills (SIGKILL) and reaps the child; returns its status.
    pub(super) fn kill_and_reap(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL);
        self.child.wait()
    }

    /// Waits until `deadline` for the child to exit, then kills it;
    /// returns the status and whether it had to be killed.
    pub(super) fn settle_until(&mut self, deadline: Instant) -> io::Result<(ExitStatus, bool)> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, false));
            }
            if Instant::now() >= deadline {
                return Ok((self.kill_and_reap()?, true));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A child that has not reported ready yet.
#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) generation: Generation,
    pub(super) receiver: ReadyReceiver,
    pub(super) deadline: Instant,
    /// The channel said all it will (ready while stopping): stop polling
    /// it, or its end-of-file would wake the loop until the child is reaped.
    pub(super) settled: bool,
    /// A stop (SIGTERM or SIGINT) was forwarded to it: a second one would
    /// force it to exit at once, so it is not sent again.
    pub(super) told_to_stop: bool,
    /// It started at a lower priority, to be restored once it is ready.
    pub(super) niced: bool,
    /// When its priority is restored if it is still not ready (a busy
    /// machine starves a low-priority start-up); `None` once restored.
    pub(super) lift_at: Option<Instant>,
}

/// A candidate told to stop (SIGTERM) that never became the serving child:
/// it may already serve sessions it accepted from the shared listeners, so
/// it drains like any serving child and is killed only once `kill_at`
/// passes (the supervisor's child grace).
#[derive(Debug)]
pub(super) struct Retiring {
    pub(super) generation: Generation,
    pub(super) kill_at: Instant,
    /// Kept open when the stop was forwarded (the child drains to stop, not
    /// for an upgrade); `None` once the supervisor closed it.
    pub(super) _channel: Option<ReadyReceiver>,
}
