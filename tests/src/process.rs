//! Child processes that cannot outlive their test.

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// How often [`ChildGuard::wait_timeout`] looks at the child.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A spawned child process that is killed (SIGKILL) and reaped when the
/// guard is dropped, unless it was already seen to exit: a failing
/// assertion never leaves a server running and holding its ports.
///
/// Once the child has been reaped the guard sends no more signals, since
/// its pid may already belong to another process.
///
/// ```
/// use lifecycle_tests::ChildGuard;
/// use std::process::Command;
/// use std::time::Duration;
///
/// let mut child = ChildGuard::spawn(&mut Command::new("true"))?;
/// let status = child.wait_timeout(Duration::from_secs(10))?;
/// assert!(status.is_some_and(|s| s.success()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `command` and guards the child.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        Ok(Self {
            child: command.spawn()?,
            exited: None,
        })
    }

    /// Spawns `command` whose program was copied a moment ago: such a copy
    /// may still be open for writing in a process another test thread
    /// forked meanwhile (until its exec closes it), and exec fails with
    /// `ETXTBSY` for that moment; this tries again for up to two seconds.
    pub fn spawn_fresh(command: &mut Command) -> io::Result<Self> {
        let mut tries = 0;
        loop {
            match ChildGuard::spawn(command) {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                spawned => return spawned,
            }
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its piped stdout or stderr.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `sig` to the child. Fails with `InvalidInput` once the child
    /// has been reaped (its pid may have been reused).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        if let Some(status) = self.exited {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "not sending {sig} to pid {}: it already exited ({status})",
                    self.id()
                ),
            ));
        }
        let pid = i32::try_from(self.id()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pid {} does not fit a pid_t", self.id()),
            )
        })?;
        signal::kill(Pid::from_raw(pid), sig).map_err(io::Error::from)
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits at most `timeout` for the child to exit; `None` if it still
    /// runs. Pass generous timeouts: they bound a hang, they do not measure
    /// speed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Errors cannot be reported from drop; the child is gone either way
        // unless the kernel refuses SIGKILL, which it does not for our own child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_and_reaps_a_running_child() {
        let guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
        let pid = Pid::from_raw(i32::try_from(guard.id()).unwrap());
        drop(guard);
        // Reaped: the pid no longer names our child (ESRCH), not even a zombie.
        assert_eq!(signal::kill(pid, None), Err(nix::errno::Errno::ESRCH));
    }

    #[test]
    fn signal_and_wait_report_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
        guard.signal(Signal::SIGTERM).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(Signal::SIGTERM as i32)
        );
        assert!(
            guard.signal(Signal::SIGTERM).is_err(),
            "no signal after reaping"
        );
    }

    #[test]
    fn wait_timeout_returns_none_while_running() {
        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
        assert!(guard
            .wait_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none());
    }
}
