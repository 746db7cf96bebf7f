//! The private readiness channel between a parent and the child it starts.
//!
//! The parent creates a pipe per child ([`ReadyPipe`]), passes the write end
//! as the descriptor right after the listeners and files, and announces its
//! number in `<PREFIX>_READY_FD`. The child takes it at start-up
//! ([`Handoff::take_ready_channel`](crate::Handoff::take_ready_channel)) and,
//! once every listener accepts, writes [`READY_MESSAGE`] with
//! [`ReadyChannel::notify_ready`]. The parent waits for that line with a
//! timeout ([`ReadyReceiver`]). A child that exits (or closes the channel)
//! first shows as end-of-file: it never became ready.
//!
//! A pipe rather than `NOTIFY_SOCKET`: it is private to one child (an old
//! child draining during an upgrade cannot speak for the new one), it needs
//! no file system path, and its end-of-file tells the parent at once that
//! the child is gone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::error::{Error, Result};

/// What the child writes on the channel when it is ready: `READY=1\n`
/// (the same words as `sd_notify`).
pub const READY_MESSAGE: &[u8] = b"READY=1\n";

/// The most bytes the parent buffers from a child before deciding it is
/// not speaking the protocol.
const MAX_BUFFERED: usize = 4096;

/// A fresh readiness pipe, held by the parent while it spawns one child.
///
/// Both ends are close-on-exec; the spawner places the write end in the
/// child (which clears the flag there only). After spawning, turn it into a
/// [`ReadyReceiver`], which closes the parent's copy of the write end so
/// that the child's exit shows as end-of-file.
///
/// ```
/// use std::time::Duration;
/// use lifecycle_handoff::{ReadyPipe, ReadyState};
///
/// let pipe = ReadyPipe::new()?;
/// let mut child_end = pipe.write_end().try_clone_to_owned().unwrap();
/// let mut receiver = pipe.into_receiver();
/// assert_eq!(receiver.wait(Duration::from_millis(10))?, ReadyState::Pending);
/// std::io::Write::write_all(&mut std::fs::File::from(child_end), b"READY=1\n").unwrap();
/// assert_eq!(receiver.wait(Duration::from_secs(5))?, ReadyState::Ready);
/// # Ok::<(), lifecycle_handoff::Error>(())
/// ```
#[derive(Debug)]
pub struct ReadyPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl ReadyPipe {
    /// Creates the pipe (both ends close-on-exec, the read end non-blocking).
    pub fn new() -> Result<Self> {
        let fail = |operation| {
            move |errno: nix::errno::Errno| Error::ReadyChannel {
                operation,
                source: io::Error::from(errno),
            }
        };
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fail("pipe2"))?;
        let flags = fcntl(&read, FcntlArg::F_GETFL).map_err(fail("fcntl(F_GETFL)"))?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(&read, FcntlArg::F_SETFL(flags)).map_err(fail("fcntl(F_SETFL, O_NONBLOCK)"))?;
        Ok(ReadyPipe { read, write })
    }

    /// The end to place in the child.
    pub fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// Closes the parent's copy of the write end and returns the read end.
    /// Call it right after spawning the child.
    pub fn into_receiver(self) -> ReadyReceiver {
        ReadyReceiver {
            fd: self.read,
            buffer: Vec::new(),
        }
    }
}

/// Where the readiness channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    /// The child wrote [`READY_MESSAGE`].
    Ready,
    /// Nothing decisive yet (or the wait timed out).
    Pending,
    /// The channel closed without a ready message: the child exited or
    /// closed its end; it will never be ready.
    Closed,
}

/// The parent's end of a readiness channel.
#[derive(Debug)]
pub struct ReadyReceiver {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl ReadyReceiver {
    /// Reads what the child has written so far, without blocking.
    pub fn poll_ready(&mut self) -> Result<ReadyState> {
        let mut chunk = [0u8; 512];
        loop {
            match nix::unistd::read(&self.fd, &mut chunk) {
                Ok(0) => {
                    return Ok(if self.has_ready() {
                        ReadyState::Ready
                    } else {
                        ReadyState::Closed
                    })
                }
                Ok(n) => {
                    let room = MAX_BUFFERED.saturating_sub(self.buffer.len());
                    self.buffer.extend_from_slice(&chunk[..n.min(room)]);
                    if self.has_ready() {
                        return Ok(ReadyState::Ready);
                    }
                    if room == 0 {
                        // A flood without the ready line: not our protocol.
                        return Ok(ReadyState::Closed);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    return Ok(if self.has_ready() {
                        ReadyState::Ready
                    } else {
                        ReadyState::Pending
                    })
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => {
                    return Err(Error::ReadyChannel {
                        operation: "read",
                        source: io::Error::from(errno),
                    })
                }
            }
        }
    }

    /// Waits at most `timeout` for the child to become ready or close the
    /// channel; [`ReadyState::Pending`] means the time ran out.
    pub fn wait(&mut self, timeout: Duration) -> Result<ReadyState> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.poll_ready()?;
            if state != ReadyState::Pending {
                return Ok(state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(ReadyState::Pending);
            }
            let ready = poll_readable(&[self.fd.as_fd()], Some(left)).map_err(|source| {
                Error::ReadyChannel {
                    operation: "poll",
                    source,
                }
            })?;
            if ready.is_empty() && deadline <= Instant::now() {
                return Ok(ReadyState::Pending);
            }
        }
    }

    /// What the child wrote so far (at most 4 KiB), for a failure message.
    pub fn received(&self) -> &[u8] {
        &self.buffer
    }

    fn has_ready(&self) -> bool {
        self.buffer
            .split_inclusive(|b| *b == b'\n')
            .any(|line| line == READY_MESSAGE)
    }
}

impl AsFd for ReadyReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until one of `fds` is readable (or hung up), at most `timeout`
/// (`None`: no limit); returns the indexes of those that are. An
/// interrupted wait returns an empty list.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<usize>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = match timeout {
        None => -1,
        // Round up so a short remaining time does not spin at 0 ms.
        Some(t) => libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX),
    };
    let count = libc::nfds_t::try_from(polls.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `polls` is a live, properly initialised array of `count`
    // pollfd structures that poll may write `revents` into; the descriptors
    // are borrowed, so they stay open for the call.
    let result = unsafe { libc::poll(polls.as_mut_ptr(), count, millis) };
    if result < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(err);
    }
    Ok(polls
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect())
}

/// The child's end of the readiness channel.
///
/// Obtained once from [`Handoff::take_ready_channel`](crate::Handoff::take_ready_channel)
/// (it exists only when the parent passed one). Call
/// [`notify_ready`](Self::notify_ready) once every listener accepts. Keep it
/// until then: dropping it without notifying closes the channel, and the
/// parent then treats this process as failed and kills it.
#[derive(Debug)]
pub struct ReadyChannel {
    fd: OwnedFd,
}

impl ReadyChannel {
    /// Adopts and checks the descriptor `fd` announced by `var`: it must be
    /// the write end of a pipe. It is made close-on-exec.
    ///
    /// # Safety
    ///
    /// `fd` must have been placed in this process for it by the parent,
    /// nothing else in the process may own it, and it may be adopted once.
    pub(crate) unsafe fn adopt(fd: RawFd, var: &str) -> Result<Self> {
        let entry = format!("{var}={fd}");
        // SAFETY: forwarded from this function's contract.
        let owned = unsafe { crate::validate::adopt(fd, &entry) }?;
        let stat = nix::sys::stat::fstat(&owned).map_err(|errno| Error::FdCheck {
            fd,
            entry: entry.clone(),
            operation: "fstat",
            source: io::Error::from(errno),
        })?;
        let flags = fcntl(&owned, FcntlArg::F_GETFL).map_err(|errno| Error::FdCheck {
            fd,
            entry: entry.clone(),
            operation: "fcntl(F_GETFL)",
            source: io::Error::from(errno),
        })?;
        let is_fifo = stat.st_mode & libc::S_IFMT == libc::S_IFIFO;
        let writable = matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR);
        if !is_fifo || !writable {
            return Err(Error::NotAReadyPipe {
                fd,
                var: var.to_owned(),
                found: if is_fifo {
                    "read-only pipe end".to_owned()
                } else {
                    file_kind_name(stat.st_mode).to_owned()
                },
            });
        }
        let cloexec = nix::fcntl::FdFlag::FD_CLOEXEC;
        fcntl(&owned, FcntlArg::F_SETFD(cloexec)).map_err(|errno| Error::FdCheck {
            fd,
            entry,
            operation: "fcntl(F_SETFD, FD_CLOEXEC)",
            source: io::Error::from(errno),
        })?;
        Ok(ReadyChannel { fd: owned })
    }

    /// Tells the parent this process is ready (writes [`READY_MESSAGE`])
    /// and closes the channel. Call it once every listener accepts: the
    /// parent then drains the previous generation.
    pub fn notify_ready(self) -> Result<()> {
        let raw = self.fd.as_raw_fd();
        let mut written = 0;
        while written < READY_MESSAGE.len() {
            match nix::unistd::write(&self.fd, &READY_MESSAGE[written..]) {
                Ok(n) => written += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => {
                    return Err(Error::ReadyNotify {
                        fd: raw,
                        source: io::Error::from(errno),
                    })
                }
            }
        }
        Ok(())
    }
}

fn file_kind_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFSOCK => "socket",
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of another type",
    }
}
