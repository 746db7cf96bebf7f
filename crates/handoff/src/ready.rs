//! The private readiness channel between a parent and the child it starts.
//!
//! The parent creates a connected Unix stream socket pair per child
//! ([`ReadyPair`]), passes one end as the descriptor right after the
//! listeners and files, and announces its number in `<PREFIX>_READY_FD`.
//! The child takes it at start-up
//! ([`Handoff::take_ready_channel`](crate::Handoff::take_ready_channel)) and,
//! once every listener accepts, writes [`READY_MESSAGE`] with
//! [`ReadyChannel::notify_ready`]. The parent waits for that line with a
//! timeout ([`ReadyReceiver`]). A child that exits (or closes the channel)
//! first shows as end-of-file: it never became ready.
//!
//! The other direction carries the parent's upgrade counters: after every
//! upgrade outcome the parent writes one line
//! `GENERATION=<g> UPGRADES_OK=<n> UPGRADES_FAILED=<m>` to the serving
//! child, which reads them with [`ReadyChannel::recv_update`] (so its
//! metrics show a failed upgrade at once).
//!
//! A private socket pair rather than `NOTIFY_SOCKET`: it belongs to one
//! child (an old child draining during an upgrade cannot speak for the new
//! one), it needs no file system path, its end-of-file tells the parent at
//! once that the child is gone, and it carries the counters back.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use socket2::{Domain, SockRef, Type};

use crate::error::{Error, Result};
use crate::lineage::Lineage;
use crate::validate::file_kind;

/// What the child writes on the channel when it is ready: `READY=1\n`
/// (the same words as `sd_notify`).
pub const READY_MESSAGE: &[u8] = b"READY=1\n";

/// The most bytes the parent buffers from a child before deciding it is
/// not speaking the protocol.
const MAX_BUFFERED: usize = 4096;

/// A fresh readiness channel, held by the parent while it spawns one child.
///
/// Both ends are close-on-exec; the spawner places the child's end in the
/// child (which clears the flag there only). After spawning, turn it into a
/// [`ReadyReceiver`], which closes the parent's copy of the child's end so
/// that the child's exit shows as end-of-file.
///
/// ```
/// use std::io::Write;
/// use std::time::Duration;
/// use lifecycle_handoff::{ReadyPair, ReadyState};
///
/// let pair = ReadyPair::new()?;
/// let child_end = pair.child_end().try_clone_to_owned().unwrap();
/// let mut receiver = pair.into_receiver();
/// assert_eq!(receiver.wait(Duration::from_millis(10))?, ReadyState::Pending);
/// std::os::unix::net::UnixStream::from(child_end).write_all(b"READY=1\n").unwrap();
/// assert_eq!(receiver.wait(Duration::from_secs(5))?, ReadyState::Ready);
/// # Ok::<(), lifecycle_handoff::Error>(())
/// ```
#[derive(Debug)]
pub struct ReadyPair {
    parent: OwnedFd,
    child: OwnedFd,
}

impl ReadyPair {
    /// Creates the socket pair (both ends close-on-exec, the parent's end
    /// non-blocking).
    pub fn new() -> Result<Self> {
        let fail = |operation| {
            move |errno: nix::errno::Errno| Error::ReadyChannel {
                operation,
                source: io::Error::from(errno),
            }
        };
        let (parent, child) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(fail("socketpair"))?;
        let flags = fcntl(&parent, FcntlArg::F_GETFL).map_err(fail("fcntl(F_GETFL)"))?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(&parent, FcntlArg::F_SETFL(flags)).map_err(fail("fcntl(F_SETFL, O_NONBLOCK)"))?;
        Ok(ReadyPair { parent, child })
    }

    /// The end to place in the child.
    pub fn child_end(&self) -> BorrowedFd<'_> {
        self.child.as_fd()
    }

    /// Closes the parent's copy of the child's end and returns the parent's
    /// end. Call it right after spawning the child.
    pub fn into_receiver(self) -> ReadyReceiver {
        ReadyReceiver {
            fd: self.parent,
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

    /// Sends the child the parent's current counters (one line, see
    /// [`ReadyChannel::recv_update`]). Never blocks and never raises
    /// SIGPIPE: a child that is gone or does not read loses the update.
    pub fn send_update(&self, update: &Lineage) -> io::Result<()> {
        let line = update_line(update);
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let sent = nix::sys::socket::send(self.fd.as_raw_fd(), line.as_bytes(), flags)
            .map_err(io::Error::from)?;
        if sent != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short update write",
            ));
        }
        Ok(())
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
/// parent then treats this process as failed and kills it. Afterwards,
/// [`recv_update`](Self::recv_update) (in a thread of its own: it blocks)
/// yields the parent's upgrade counters after each upgrade outcome.
#[derive(Debug)]
pub struct ReadyChannel {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl ReadyChannel {
    /// Adopts and checks the descriptor `fd` announced by `var`: it must be
    /// a connected (not listening) Unix stream socket. It is made
    /// close-on-exec and blocking.
    ///
    /// # Safety
    ///
    /// `fd` must have been placed in this process for it by the parent,
    /// nothing else in the process may own it, and it may be adopted once.
    pub(crate) unsafe fn adopt(fd: RawFd, var: &str) -> Result<Self> {
        let entry = format!("{var}={fd}");
        // SAFETY: forwarded from this function's contract.
        let owned = unsafe { crate::validate::adopt(fd, &entry) }?;
        let check = |operation: &'static str| {
            let entry = entry.clone();
            move |source: io::Error| Error::FdCheck {
                fd,
                entry,
                operation,
                source,
            }
        };
        let not_channel = |found: String| Error::NotAReadyChannel {
            fd,
            var: var.to_owned(),
            found,
        };
        let found = file_kind(owned.as_fd(), &entry)?;
        if found != "socket" {
            return Err(not_channel(found.to_owned()));
        }
        let socket = SockRef::from(&owned);
        let domain = socket.domain().map_err(check("getsockopt(SO_DOMAIN)"))?;
        let kind = socket.r#type().map_err(check("getsockopt(SO_TYPE)"))?;
        if domain != Domain::UNIX || kind != Type::STREAM {
            return Err(not_channel("socket of another family or type".to_owned()));
        }
        if socket
            .is_listener()
            .map_err(check("getsockopt(SO_ACCEPTCONN)"))?
        {
            return Err(not_channel("listening socket".to_owned()));
        }
        socket
            .set_nonblocking(false)
            .map_err(check("fcntl(F_SETFL)"))?;
        socket.set_cloexec(true).map_err(check("fcntl(F_SETFD)"))?;
        Ok(ReadyChannel {
            fd: owned,
            buffer: Vec::new(),
        })
    }

    /// A second handle on this channel that tells, without reading,
    /// whether the parent closed its end (see [`ChannelWatch`]). Take it
    /// before handing the channel to the thread that reads the updates.
    pub fn watch(&self) -> Result<ChannelWatch> {
        let fd = self.fd.try_clone().map_err(|source| Error::ReadyChannel {
            operation: "fcntl(F_DUPFD_CLOEXEC)",
            source,
        })?;
        Ok(ChannelWatch { fd })
    }

    /// Tells the parent this process is ready (writes [`READY_MESSAGE`]).
    /// Call it once every listener accepts: the parent then drains the
    /// previous generation. The channel stays open for
    /// [`recv_update`](Self::recv_update).
    pub fn notify_ready(&mut self) -> Result<()> {
        let raw = self.fd.as_raw_fd();
        let mut written = 0;
        while written < READY_MESSAGE.len() {
            let flags = MsgFlags::MSG_NOSIGNAL;
            match nix::sys::socket::send(raw, &READY_MESSAGE[written..], flags) {
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

    /// Waits for the parent's next counters (sent after every upgrade
    /// outcome while this process serves); `None` once the parent closed
    /// the channel (it exited, or this process was drained). Blocks: call
    /// it from a thread of its own.
    pub fn recv_update(&mut self) -> Result<Option<Lineage>> {
        let raw = self.fd.as_raw_fd();
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return parse_update(&line).map(Some);
            }
            let mut chunk = [0u8; 256];
            match nix::unistd::read(&self.fd, &mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) if self.buffer.len() + n > MAX_BUFFERED => {
                    return Err(bad_update(&self.buffer))
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => {
                    return Err(Error::FdCheck {
                        fd: raw,
                        entry: "readiness channel".to_owned(),
                        operation: "read",
                        source: io::Error::from(errno),
                    })
                }
            }
        }
    }
}

/// `GENERATION=<g> UPGRADES_OK=<n> UPGRADES_FAILED=<m>\n`.
fn update_line(update: &Lineage) -> String {
    format!(
        "GENERATION={} UPGRADES_OK={} UPGRADES_FAILED={}\n",
        update.generation, update.upgrades_ok, update.upgrades_failed
    )
}

fn bad_update(line: &[u8]) -> Error {
    Error::BadUpdate {
        line: String::from_utf8_lossy(line).trim_end().to_owned(),
    }
}

fn parse_update(line: &[u8]) -> Result<Lineage> {
    let text = std::str::from_utf8(line).map_err(|_| bad_update(line))?;
    let mut fields = text.trim_end_matches('\n').split(' ');
    let mut number = |key: &str| -> Result<u64> {
        fields
            .next()
            .and_then(|field| field.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad_update(line))
    };
    let update = Lineage {
        generation: number("GENERATION")?,
        upgrades_ok: number("UPGRADES_OK")?,
        upgrades_failed: number("UPGRADES_FAILED")?,
    };
    if fields.next().is_some() {
        return Err(bad_update(line));
    }
    Ok(update)
}

/// Whether the parent closed its end of a child's readiness channel
/// ([`ReadyChannel::watch`]).
///
/// An upgrading parent closes an old child's channel *before* it sends the
/// old child SIGTERM, and keeps the serving child's channel open when it
/// forwards a stop. So when the signal arrives, [`parent_closed`] tells an
/// upgrade drain (a successor now accepts from the same sockets: stop
/// accepting at once) from a stop of the whole service. The check is a
/// zero-timeout `poll` for hang-up that neither reads nor consumes data.
///
/// [`parent_closed`]: Self::parent_closed
#[derive(Debug)]
pub struct ChannelWatch {
    fd: OwnedFd,
}

impl ChannelWatch {
    /// True once the parent closed its end (or is gone). A failed check
    /// counts as not closed.
    pub fn parent_closed(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `poll` points at one valid `pollfd` for the duration of
        // the call, the count is 1, and the descriptor is owned by `self`.
        let result = unsafe { libc::poll(&mut poll, 1, 0) };
        result > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_round_trip_and_garbage_is_refused() {
        let update = Lineage {
            generation: 4,
            upgrades_ok: 3,
            upgrades_failed: 2,
        };
        assert_eq!(
            parse_update(update_line(&update).as_bytes()).unwrap(),
            update
        );
        for bad in [
            &b"GENERATION=1 UPGRADES_OK=0\n"[..],
            b"GENERATION=1 UPGRADES_OK=0 UPGRADES_FAILED=x\n",
            b"GENERATION=1 UPGRADES_OK=0 UPGRADES_FAILED=0 MORE=1\n",
            b"UPGRADES_OK=0 GENERATION=1 UPGRADES_FAILED=0\n",
            b"\xff\n",
        ] {
            let err = parse_update(bad).unwrap_err();
            assert!(matches!(err, Error::BadUpdate { .. }), "{err}");
            assert!(err.to_string().contains("GENERATION=<g>"), "{err}");
        }
    }

    #[test]
    fn a_watch_sees_the_parent_close_its_end_without_reading() {
        let pair = ReadyPair::new().unwrap();
        let child_end = pair.child_end().try_clone_to_owned().unwrap();
        let receiver = pair.into_receiver();
        let channel = ReadyChannel {
            fd: child_end,
            buffer: Vec::new(),
        };
        let watch = channel.watch().unwrap();
        assert!(!watch.parent_closed());
        // Unread data does not hide the hang-up.
        receiver
            .send_update(&Lineage {
                generation: 1,
                upgrades_ok: 0,
                upgrades_failed: 0,
            })
            .unwrap();
        assert!(!watch.parent_closed());
        drop(receiver);
        assert!(watch.parent_closed());
        let mut channel = channel;
        assert_eq!(
            channel.recv_update().unwrap().map(|l| l.generation),
            Some(1)
        );
        assert_eq!(channel.recv_update().unwrap(), None);
    }
}
