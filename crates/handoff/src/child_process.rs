//! A child process started by [`ChildSpawner`](crate::ChildSpawner).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A child process started by [`ChildSpawner`](crate::ChildSpawner): its pid,
/// and its exit status once reaped. The methods are those of
/// [`std::process::Child`] that a supervisor needs.
///
/// As with `std::process::Child`, dropping it neither kills nor reaps the
/// child; a supervisor [`wait`](Self::wait)s for it. Once reaped, the pid
/// is never signalled again (it may belong to another process by then).
///
/// ```no_run
/// # fn main() -> lifecycle_handoff::Result<()> {
/// use lifecycle_handoff::{ChildSpawner, Inventory};
///
/// let mut child = ChildSpawner::new()?.program("/usr/bin/true").spawn(&Inventory::default())?;
/// let status = child.wait().expect("waitpid");
/// assert!(status.success());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ChildProcess {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    pub(crate) fn new(pid: libc::pid_t) -> Self {
        ChildProcess { pid, status: None }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Its exit status if it has exited (reaping it), `None` if it still
    /// runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Waits for it to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match self.waitpid(0) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends it SIGKILL; does nothing once it has been reaped.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill takes plain integers; the pid is our unreaped child,
        // so it cannot have been reused.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn waitpid(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid writes the status into `raw` on this frame.
        let pid = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            return Ok(None);
        }
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        Ok(Some(status))
    }
}
