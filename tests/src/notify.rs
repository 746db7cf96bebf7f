//! A stand-in for systemd's `NOTIFY_SOCKET`: a real Unix datagram socket
//! with `SO_PASSCRED`, so that every datagram comes with its sender's pid.
//! Read it in order ([`NotifySocket::recv`], [`until`](NotifySocket::until),
//! [`during`](NotifySocket::during)), or hand it to a thread that records
//! everything ([`NotifySocket::record`]).

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};

/// One notification: its text, the sender's pid, when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The datagram's text (`KEY=value` lines).
    pub text: String,
    /// The sending process (from `SCM_CREDENTIALS`).
    pub pid: u32,
    /// When it was read.
    pub at: SystemTime,
}

impl Datagram {
    /// Whether `line` is one of the datagram's lines.
    pub fn has_line(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

/// A bound notification socket, open to every user (the service may run as
/// another one).
///
/// ```
/// use lifecycle_tests::NotifySocket;
/// use std::os::unix::net::UnixDatagram;
/// use std::time::Duration;
///
/// let systemd = NotifySocket::bind()?;
/// let service = UnixDatagram::unbound()?;
/// service.send_to(b"STATUS=starting\n", systemd.path())?;
/// service.send_to(b"READY=1\n", systemd.path())?;
/// let seen = systemd.until("READY=1", Duration::from_secs(5))?;
/// assert_eq!(seen, ["STATUS=starting\n", "READY=1\n"]);
/// assert!(systemd.during(Duration::from_millis(50))?.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct NotifySocket {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    /// Binds `notify` in a new temporary directory of its own.
    pub fn bind() -> io::Result<NotifySocket> {
        let dir = crate::paths::temp_dir("notify")?;
        let mut socket = NotifySocket::bind_at(&dir.path().join("notify"))?;
        socket._dir = Some(dir);
        Ok(socket)
    }

    /// Binds at `path` (in a directory the service can reach).
    pub fn bind_at(path: &Path) -> io::Result<NotifySocket> {
        let sock = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        Ok(NotifySocket {
            _dir: None,
            path: path.to_owned(),
            sock,
        })
    }

    /// Binds the abstract socket `name` (Linux); its [`path`](Self::path)
    /// is `@name`, as `NOTIFY_SOCKET` writes it.
    #[cfg(target_os = "linux")]
    pub fn bind_abstract(name: &str) -> io::Result<NotifySocket> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let sock = UnixDatagram::bind_addr(&addr)?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        Ok(NotifySocket {
            _dir: None,
            path: PathBuf::from(format!("@{name}")),
            sock,
        })
    }

    /// Where it is bound: the value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket itself (to stop reading it, or to drain it by hand).
    pub fn socket(&self) -> &UnixDatagram {
        &self.sock
    }

    /// The next datagram, waiting at most `limit`; `None` when none came.
    pub fn recv_datagram(&self, limit: Duration) -> io::Result<Option<Datagram>> {
        self.sock
            .set_read_timeout(Some(limit.max(Duration::from_micros(1))))?;
        match receive(&self.sock) {
            Ok(d) => Ok(Some(d)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The next datagram's text, waiting at most `limit`.
    pub fn recv(&self, limit: Duration) -> io::Result<Option<String>> {
        Ok(self.recv_datagram(limit)?.map(|d| d.text))
    }

    /// Datagrams until one starts with `prefix` (returned last); an error
    /// naming what came instead after `limit`.
    pub fn until(&self, prefix: &str, limit: Duration) -> io::Result<Vec<String>> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(msg) => {
                    let hit = msg.starts_with(prefix);
                    seen.push(msg);
                    if hit {
                        return Ok(seen);
                    }
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no {prefix:?} within {limit:?}; got {seen:?}"),
                    ))
                }
            }
        }
    }

    /// Every datagram that arrives within `window`.
    pub fn during(&self, window: Duration) -> io::Result<Vec<String>> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(seen);
            }
            match self.recv(left)? {
                Some(msg) => seen.push(msg),
                None => return Ok(seen),
            }
        }
    }

    /// Hands the socket to a thread that records every datagram.
    pub fn record(self) -> NotifyRecorder {
        self.record_with_probe(None)
    }

    /// [`record`](Self::record), and the thread runs `probe` the moment a
    /// `READY=1` arrives, before it reads another datagram (see
    /// [`NotifyRecorder::probed`]).
    pub fn record_with_probe(self, probe: Option<Probe>) -> NotifyRecorder {
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&inbox), Arc::clone(&stop));
        let path = self.path.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let d = match self.recv_datagram(Duration::from_millis(100)) {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        sink.lock().1 = Some(e.to_string());
                        sink.grew.notify_all();
                        return;
                    }
                };
                if let Some(probe) = probe.as_ref().filter(|_| d.text.contains("READY=1")) {
                    let outcome = probe();
                    let mut probed = sink.probed.lock().unwrap_or_else(PoisonError::into_inner);
                    probed.get_or_insert(outcome);
                }
                sink.lock().0.push(d);
                sink.grew.notify_all();
            }
        });
        NotifyRecorder { path, inbox, stop }
    }
}

/// What the recording thread does the moment `READY=1` arrives, before it
/// reads another datagram.
pub type Probe = Box<dyn Fn() -> Result<(), String> + Send>;

#[derive(Debug, Default)]
struct Inbox {
    /// What came, and the error that stopped the thread.
    got: Mutex<(Vec<Datagram>, Option<String>)>,
    grew: Condvar,
    /// The outcome of the probe run when `READY=1` arrived.
    probed: Mutex<Option<Result<(), String>>>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, (Vec<Datagram>, Option<String>)> {
        self.got.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`NotifySocket`] read by a thread: everything that came, with the
/// senders' pids. The thread stops when this is dropped.
#[derive(Debug)]
pub struct NotifyRecorder {
    path: PathBuf,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
}

impl NotifyRecorder {
    /// Where the socket is bound: the value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram so far.
    pub fn all(&self) -> Vec<Datagram> {
        self.inbox.lock().0.clone()
    }

    /// The datagrams so far whose text starts with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Vec<Datagram> {
        let got = self.inbox.lock();
        got.0
            .iter()
            .filter(|d| d.text.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The first datagram (from the start) matching `pred`, waiting at
    /// most `timeout` for it; `None` at once if the socket failed.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Datagram) -> bool) -> Option<Datagram> {
        let deadline = Instant::now() + timeout;
        let mut got = self.inbox.lock();
        loop {
            if let Some(d) = got.0.iter().find(|d| pred(d)) {
                return Some(d.clone());
            }
            let now = Instant::now();
            if now >= deadline || got.1.is_some() {
                return None;
            }
            got = self
                .inbox
                .grew
                .wait_timeout(got, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The first datagram that has `line` as one of its lines, waiting at
    /// most `timeout`.
    pub fn wait_line(&self, timeout: Duration, line: &str) -> Option<Datagram> {
        self.wait(timeout, |d| d.has_line(line))
    }

    /// The outcome of the probe (see
    /// [`NotifySocket::record_with_probe`]), once it ran.
    pub fn probed(&self) -> Option<Result<(), String>> {
        self.inbox
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The error that stopped the recording thread, if one did.
    pub fn error(&self) -> Option<String> {
        self.inbox.lock().1.clone()
    }
}

impl Drop for NotifyRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One datagram and its sender's credentials.
fn receive(sock: &UnixDatagram) -> io::Result<Datagram> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let pid = msg
        .cmsgs()?
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
            _ => None,
        })
        .ok_or_else(|| io::Error::other("SO_PASSCRED gave a datagram without its sender"))?;
    let len = msg.bytes;
    Ok(Datagram {
        text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        pid: u32::try_from(pid).map_err(io::Error::other)?,
        at: SystemTime::now(),
    })
}
