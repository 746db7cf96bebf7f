//! How each child settles: a candidate that reports ready (promoted, the
//! old generation drains), fails, times out or is retired, and the exits
//! reaped on SIGCHLD, the serving child's ending the service.

use std::io;
use std::process::ExitStatus;
use std::time::Instant;

use nix::sys::signal::Signal;

use super::child::{Candidate, Generation, Retiring};
use super::priority;
use super::run::Loop;
use super::{SupervisorEvent, UpgradeFailure, CLOSED_CHANNEL_GRACE};
use crate::error::{Error, Result};
use crate::notify::NotifyState;
use crate::ready::ReadyState;
use crate::supervise::exit_code;

impl<F: FnMut(&SupervisorEvent)> Loop<'_, F> {
    /// The candidate's channel is readable: ready, or closed.
    pub(super) fn check_candidate(&mut self) -> Result<Option<i32>> {
        let Some(candidate) = &mut self.candidate else {
            return Ok(None);
        };
        match candidate.receiver.poll_ready()? {
            ReadyState::Pending => Ok(None),
            ReadyState::Ready if !self.stopping => {
                // Ready and already dead is a failed upgrade, not a new
                // serving child: leave it to `reap` (its SIGCHLD is queued
                // or on its way), which fails it and keeps the old child.
                let pid = candidate.generation.pid();
                if (candidate.generation.child.try_wait())
                    .map_err(wait_err(pid))?
                    .is_some()
                {
                    return self.reap();
                }
                self.promote();
                self.run_pending()?;
                Ok(None)
            }
            // Told to stop before it was ready: let it exit (reaped on
            // SIGCHLD) without making it the serving one.
            ReadyState::Ready => {
                candidate.settled = true;
                Ok(None)
            }
            ReadyState::Closed => {
                let Some(mut candidate) = self.candidate.take() else {
                    return Ok(None);
                };
                let pid = candidate.generation.pid();
                let (status, killed) = candidate
                    .generation
                    .settle_until(Instant::now() + CLOSED_CHANNEL_GRACE)
                    .map_err(wait_err(pid))?;
                let failure = if killed {
                    UpgradeFailure::ClosedChannel
                } else {
                    UpgradeFailure::Exited {
                        code: exit_code(status),
                    }
                };
                self.candidate_failed(candidate.generation, status, failure)
            }
        }
    }

    /// A candidate is gone without becoming ready (already reaped).
    fn candidate_failed(
        &mut self,
        generation: Generation,
        status: ExitStatus,
        failure: UpgradeFailure,
    ) -> Result<Option<i32>> {
        let Some(serving) = &self.serving else {
            // The first child: there is no service to keep.
            if self.stopping || matches!(failure, UpgradeFailure::Exited { .. }) {
                let code = exit_code(status);
                self.emit(SupervisorEvent::ServingExited {
                    generation: generation.number,
                    pid: generation.pid(),
                    code,
                });
                return Ok(Some(code));
            }
            return Err(Error::NotReady {
                generation: generation.number,
                pid: generation.pid(),
                reason: failure.to_string(),
            });
        };
        let from = serving.number;
        let failure = if self.stopping {
            UpgradeFailure::Stopping
        } else {
            failure
        };
        self.upgrade_failed(from, generation.number, failure);
        self.run_pending()?;
        Ok(None)
    }

    /// [`promote_candidate`](Self::promote_candidate), under `SCHED_IDLE`
    /// when candidates start so and a generation serves (an upgrade: the
    /// first child has nothing to yield to).
    fn promote(&mut self) {
        let idle = priority::IdleWhile::enter(self.start_idle && self.serving.is_some());
        self.promote_candidate();
        self.leave_idle(idle);
    }

    /// Makes the ready candidate the serving generation (its threads set
    /// back to the supervisor's normal priority) and tells the old one to
    /// drain.
    fn promote_candidate(&mut self) {
        let Some(candidate) = self.candidate.take() else {
            return;
        };
        let mut new = candidate.generation;
        new.channel = Some(candidate.receiver);
        let (number, pid) = (new.number, new.pid());
        if candidate.niced {
            // Back to the normal priority before the old generation drains:
            // from now on the new one serves every new connection.
            let (threads, error) = match priority::restore(pid, self.normal) {
                Ok(threads) => (threads, None),
                Err(e) => (0, Some(e.to_string())),
            };
            self.emit(SupervisorEvent::PriorityRestored {
                generation: number,
                pid,
                threads,
                error,
            });
        }
        match self.serving.replace(new) {
            None => {
                self.stats.serving = number;
                self.send_update();
                self.emit(SupervisorEvent::Ready {
                    generation: number,
                    pid,
                });
                let status = format!("serving generation {number} (pid {pid})");
                self.notify(&[
                    NotifyState::Ready,
                    NotifyState::MainPid(std::process::id()),
                    NotifyState::Status(&status),
                ]);
            }
            Some(mut old) => {
                // The channel closes first, then SIGTERM: by the time the
                // old child handles the signal, its end of the channel is
                // at end-of-file, which tells it that this is an upgrade
                // drain and not a stop (see `ChannelWatch`).
                old.channel = None;
                old.signal(Signal::SIGTERM);
                let from = old.number;
                self.draining_since.push((from, super::unix_now()));
                self.draining.push(old);
                self.stats.serving = number;
                self.stats.succeeded += 1;
                self.send_update();
                self.upgrade_settled(from, number, Some(pid), None);
                self.emit(SupervisorEvent::UpgradeSucceeded {
                    from,
                    to: number,
                    pid,
                    stats: self.stats,
                });
                let status = format!(
                    "serving generation {number} (pid {pid}); upgrades ok {}, failed {}",
                    self.stats.succeeded, self.stats.failed
                );
                self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
        }
    }

    pub(super) fn check_deadline(&mut self) -> Result<Option<i32>> {
        let expired = self
            .candidate
            .as_ref()
            .filter(|c| c.deadline <= Instant::now())
            .map(|c| c.generation.number);
        let Some(expired) = expired else {
            return Ok(None);
        };
        // A ready message that raced the deadline still counts.
        if let Some(code) = self.check_candidate()? {
            return Ok(Some(code));
        }
        // Settled there (promoted, or failed), the candidate may already
        // have been followed by a queued upgrade's: that one has a
        // deadline of its own and is not retired here.
        if self.candidate.as_ref().map(|c| c.generation.number) != Some(expired) {
            return Ok(None);
        }
        let Some(mut candidate) = self.candidate.take() else {
            return Ok(None);
        };
        let failure = UpgradeFailure::Timeout {
            after: self.supervisor.ready_timeout,
        };
        let Some(serving) = &self.serving else {
            // The first child: no service to keep; it stops within its
            // grace, then `run` reports it.
            let pid = candidate.generation.pid();
            if !candidate.told_to_stop {
                candidate.generation.signal(Signal::SIGTERM);
            }
            let kill_at = Instant::now() + self.supervisor.child_grace;
            let (status, _) = (candidate.generation)
                .settle_until(kill_at)
                .map_err(wait_err(pid))?;
            return self.candidate_failed(candidate.generation, status, failure);
        };
        let (from, to) = (serving.number, candidate.generation.number);
        self.retire(candidate);
        let failure = if self.stopping {
            UpgradeFailure::Stopping
        } else {
            failure
        };
        self.upgrade_failed(from, to, failure);
        self.run_pending()?;
        Ok(None)
    }

    /// Tells a candidate that will not serve to stop, and keeps it until it
    /// exits (reaped on SIGCHLD) or its child grace ends (killed). Its
    /// channel is closed first, so that it drains as for an upgrade (stops
    /// accepting at once; the serving child takes the new connections) —
    /// unless a stop was forwarded to it already, which is not repeated.
    fn retire(&mut self, candidate: Candidate) {
        let Candidate {
            generation,
            receiver,
            told_to_stop,
            ..
        } = candidate;
        let channel = if told_to_stop {
            Some(receiver)
        } else {
            drop(receiver);
            generation.signal(Signal::SIGTERM);
            None
        };
        self.retiring.push(Retiring {
            generation,
            kill_at: Instant::now() + self.supervisor.child_grace,
            _channel: channel,
        });
    }

    /// Kills (and reaps) the retiring candidates whose grace is over.
    pub(super) fn kill_overdue(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut index = 0;
        while index < self.retiring.len() {
            if self.retiring[index].kill_at > now {
                index += 1;
                continue;
            }
            let mut retiring = self.retiring.remove(index);
            let pid = retiring.generation.pid();
            let (status, killed) = (retiring.generation)
                .settle_until(now)
                .map_err(wait_err(pid))?;
            self.candidate_exited(&retiring.generation, status, killed);
        }
        Ok(())
    }

    fn candidate_exited(&mut self, generation: &Generation, status: ExitStatus, killed: bool) {
        self.emit(SupervisorEvent::CandidateExited {
            generation: generation.number,
            pid: generation.pid(),
            code: exit_code(status),
            killed,
        });
    }

    /// SIGCHLD: reaps whichever children exited.
    pub(super) fn reap(&mut self) -> Result<Option<i32>> {
        let mut index = 0;
        while index < self.retiring.len() {
            let retiring = &mut self.retiring[index];
            let pid = retiring.generation.pid();
            if let Some(status) = (retiring.generation.child.try_wait()).map_err(wait_err(pid))? {
                let retiring = self.retiring.remove(index);
                self.candidate_exited(&retiring.generation, status, false);
            } else {
                index += 1;
            }
        }
        let mut index = 0;
        while index < self.draining.len() {
            let old = &mut self.draining[index];
            let pid = old.pid();
            if let Some(status) = old.child.try_wait().map_err(wait_err(pid))? {
                let old = self.draining.remove(index);
                self.draining_since.retain(|(n, _)| *n != old.number);
                self.emit(SupervisorEvent::OldChildExited {
                    generation: old.number,
                    pid,
                    code: exit_code(status),
                });
            } else {
                index += 1;
            }
        }
        if let Some(candidate) = &mut self.candidate {
            let pid = candidate.generation.pid();
            if let Some(status) = candidate
                .generation
                .child
                .try_wait()
                .map_err(wait_err(pid))?
            {
                // Even one that reported ready first: an exited child
                // cannot serve, so the old one keeps serving.
                if let Some(candidate) = self.candidate.take() {
                    let failure = UpgradeFailure::Exited {
                        code: exit_code(status),
                    };
                    if let Some(code) =
                        self.candidate_failed(candidate.generation, status, failure)?
                    {
                        return Ok(Some(code));
                    }
                }
            }
        }
        if let Some(serving) = &mut self.serving {
            let pid = serving.pid();
            if let Some(status) = serving.child.try_wait().map_err(wait_err(pid))? {
                return self.serving_exited(status).map(Some);
            }
        }
        Ok(None)
    }

    /// The service is over: stops a candidate, waits for draining children,
    /// returns the serving child's code.
    fn serving_exited(&mut self, status: ExitStatus) -> Result<i32> {
        let code = exit_code(status);
        let mut from = 0;
        if let Some(serving) = self.serving.take() {
            from = serving.number;
            self.emit(SupervisorEvent::ServingExited {
                generation: serving.number,
                pid: serving.pid(),
                code,
            });
        }
        // The service is over either way: no notification after this.
        self.stopping = true;
        // A candidate may already serve sessions it accepted from the shared
        // listeners: it stops like a serving child (SIGTERM, unless a stop
        // was forwarded to it) and has the child grace to finish them.
        if let Some(mut candidate) = self.candidate.take() {
            let pid = candidate.generation.pid();
            if !candidate.told_to_stop {
                candidate.generation.signal(Signal::SIGTERM);
            }
            let kill_at = Instant::now() + self.supervisor.child_grace;
            let (status, killed) = (candidate.generation)
                .settle_until(kill_at)
                .map_err(wait_err(pid))?;
            self.candidate_exited(&candidate.generation, status, killed);
            self.upgrade_failed(from, candidate.generation.number, UpgradeFailure::Stopping);
        }
        for mut retiring in std::mem::take(&mut self.retiring) {
            let pid = retiring.generation.pid();
            let (status, killed) = (retiring.generation)
                .settle_until(retiring.kill_at)
                .map_err(wait_err(pid))?;
            self.candidate_exited(&retiring.generation, status, killed);
        }
        for mut old in std::mem::take(&mut self.draining) {
            let pid = old.pid();
            let status = old.child.wait().map_err(|source| Error::Supervise {
                pid,
                operation: "waitpid",
                source,
            })?;
            self.emit(SupervisorEvent::OldChildExited {
                generation: old.number,
                pid,
                code: exit_code(status),
            });
        }
        Ok(code)
    }
}

/// The error of a failed `waitpid` on child `pid`.
fn wait_err(pid: u32) -> impl Fn(io::Error) -> Error {
    move |source| Error::Supervise {
        pid,
        operation: "waitpid",
        source,
    }
}
