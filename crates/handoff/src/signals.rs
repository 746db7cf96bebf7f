//! Upgrade signals held from the first line of `main` until the program
//! handles them, so that one that arrives early is handled late instead of
//! terminating the process.

use std::io;
use std::marker::PhantomData;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::error::{Error, Result};

/// The signals that ask a service to upgrade: SIGHUP (what
/// `systemctl reload` sends) and SIGUSR2 (as numbers).
pub const UPGRADE_SIGNALS: [i32; 2] = [libc::SIGHUP, libc::SIGUSR2];

/// SIGHUP and SIGUSR2 blocked from the start of `main` until the program's
/// handlers for them exist.
///
/// The default action of both is to terminate the process, and a service
/// installs its handlers only once it is running — after it has bound,
/// loaded and started its runtime — while a signal can come at any time: a
/// `systemctl reload` queued during a hand-over reaches a successor as soon
/// as it is the main process, and kills it if its handlers are not there
/// yet. [`hold`](Self::hold) blocks the two in the calling thread first
/// thing in `main`, before any other thread exists (threads inherit the
/// mask, so none of them takes the default action either); a signal that
/// arrives meanwhile waits, pending. Once the handlers are installed (say
/// `tokio::signal::unix::signal(SignalKind::hangup())`),
/// [`release`](Self::release) unblocks them in the same thread, and a
/// waiting signal is delivered to its handler at once: handled late, never
/// fatal.
///
/// - Release in the thread that keeps running while the handlers are in use
///   (the main thread, running the runtime): threads started while the
///   signals were held keep them blocked, so that thread receives them.
/// - Release unblocks them even when they were blocked before `hold` (an
///   inherited mask): a service handles its signals whatever mask it got.
/// - A process that reads the signals with `sigwait` or a signalfd (the
///   privileged parent's [`UpgradeSupervisor`](crate::UpgradeSupervisor),
///   [`Supervisor`](crate::Supervisor)) keeps them blocked: it drops the
///   guard, which never unblocks anything.
/// - Children started with [`ChildSpawner`](crate::ChildSpawner) start with
///   an empty mask (std's `Command` would pass the held mask on).
///
/// The guard is not `Send`: a signal mask belongs to one thread.
///
/// ```
/// use lifecycle_handoff::HeldSignals;
/// use nix::sys::signal::{raise, SigSet, Signal};
///
/// // First thing in main, before the logger, the runtime or any thread.
/// let held = HeldSignals::hold()?;
/// raise(Signal::SIGHUP)?; // would terminate the process if it were not held
/// // Here a service installs its handler and calls `held.release()?`; the
/// // SIGHUP is then delivered to it. This example reads it with sigwait.
/// let mut hup = SigSet::empty();
/// hup.add(Signal::SIGHUP);
/// assert_eq!(hup.wait()?, Signal::SIGHUP);
/// drop(held); // still blocked
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "release the held signals once their handlers exist (dropping keeps them blocked)"]
pub struct HeldSignals {
    set: SigSet,
    /// A thread's signal mask is its own: neither `Send` nor `Sync`.
    _thread: PhantomData<*const ()>,
}

impl HeldSignals {
    /// Blocks SIGHUP and SIGUSR2 in the calling thread (and so in every
    /// thread it starts from now on).
    pub fn hold() -> Result<Self> {
        let set = upgrade_set();
        change_mask(SigmaskHow::SIG_BLOCK, &set, "block")?;
        Ok(HeldSignals {
            set,
            _thread: PhantomData,
        })
    }

    /// Unblocks them in the calling thread: call it once their handlers are
    /// installed. A signal that arrived while they were held is delivered
    /// now (without a handler it terminates the process, as it would have
    /// without `hold`).
    pub fn release(self) -> Result<()> {
        change_mask(SigmaskHow::SIG_UNBLOCK, &self.set, "unblock")
    }
}

fn upgrade_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGUSR2);
    set
}

fn change_mask(how: SigmaskHow, set: &SigSet, action: &'static str) -> Result<()> {
    nix::sys::signal::pthread_sigmask(how, Some(set), None).map_err(|errno| Error::SignalMask {
        action,
        source: io::Error::from(errno),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(signal: Signal) -> bool {
        SigSet::thread_get_mask().unwrap().contains(signal)
    }

    // Each test runs in a thread of its own: masks and thread-directed
    // signals (`raise`) stay in it.

    #[test]
    fn hold_blocks_both_and_release_unblocks_them() {
        assert!(!blocked(Signal::SIGHUP) && !blocked(Signal::SIGUSR2));
        let held = HeldSignals::hold().unwrap();
        assert!(blocked(Signal::SIGHUP) && blocked(Signal::SIGUSR2));
        assert!(!blocked(Signal::SIGTERM), "only the upgrade signals");
        held.release().unwrap();
        assert!(!blocked(Signal::SIGHUP) && !blocked(Signal::SIGUSR2));
    }

    #[test]
    fn a_held_signal_waits_instead_of_terminating() {
        let held = HeldSignals::hold().unwrap();
        nix::sys::signal::raise(Signal::SIGUSR2).unwrap();
        // Still alive; the signal is pending and can be taken.
        let mut usr2 = SigSet::empty();
        usr2.add(Signal::SIGUSR2);
        assert_eq!(usr2.wait().unwrap(), Signal::SIGUSR2);
        held.release().unwrap();
    }

    #[test]
    fn a_thread_started_while_held_inherits_the_mask() {
        let held = HeldSignals::hold().unwrap();
        let inherited = std::thread::spawn(|| blocked(Signal::SIGHUP))
            .join()
            .unwrap();
        held.release().unwrap();
        assert!(inherited);
        let after = std::thread::spawn(|| blocked(Signal::SIGHUP))
            .join()
            .unwrap();
        assert!(!after);
    }

    #[test]
    fn the_mask_error_names_the_signals_and_the_action() {
        let err = Error::SignalMask {
            action: "block",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("cannot block SIGHUP and SIGUSR2 in this thread"),
            "{text}"
        );
    }
}
