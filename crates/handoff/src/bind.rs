//! Binding listeners and opening privileged files in this process.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::secure_path::{check_secure_path, file_kind};
use crate::spec::{ListenAddress, ListenerSpec};

/// Binds and listens on `spec` with its explicit backlog: a non-blocking,
/// close-on-exec stream socket; TCP with `SO_REUSEADDR` (and `IPV6_V6ONLY`
/// for IPv6 addresses, so `[::]` and `0.0.0.0` can be two listeners).
///
/// Returns the socket and the address it is bound to (the kernel's port
/// when port 0 was asked for). An existing Unix socket file is not removed:
/// remove a stale one before starting.
///
/// ```
/// use lifecycle_handoff::{bind_listener, ListenAddress, ListenerSpec};
///
/// let spec = ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap()).with_backlog(64);
/// let (fd, bound) = bind_listener(&spec).unwrap();
/// let listener = std::net::TcpListener::from(fd);
/// let ListenAddress::Tcp(addr) = bound else { unreachable!() };
/// assert_eq!(listener.local_addr().unwrap(), addr);
/// assert_ne!(addr.port(), 0);
/// ```
pub fn bind_listener(spec: &ListenerSpec) -> Result<(OwnedFd, ListenAddress)> {
    let fail = |source| Error::Bind {
        spec: spec.to_string(),
        source,
    };
    let (socket, address) = match spec.address() {
        ListenAddress::Tcp(addr) => {
            let socket =
                Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(fail)?;
            socket.set_reuse_address(true).map_err(fail)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true).map_err(fail)?;
            }
            (socket, SockAddr::from(*addr))
        }
        ListenAddress::Unix(path) => {
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            (socket, SockAddr::unix(path).map_err(fail)?)
        }
    };
    // socket2 creates sockets close-on-exec; say so explicitly all the same.
    socket.set_cloexec(true).map_err(fail)?;
    socket.bind(&address).map_err(fail)?;
    let backlog = i32::try_from(spec.backlog()).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    let bound = match spec.address() {
        ListenAddress::Tcp(_) => {
            let local = socket.local_addr().map_err(fail)?;
            match local.as_socket() {
                Some(addr) => ListenAddress::Tcp(addr),
                None => spec.address().clone(),
            }
        }
        ListenAddress::Unix(_) => spec.address().clone(),
    };
    Ok((OwnedFd::from(socket), bound))
}

/// Opens the secret file `path` read-only and close-on-exec, safely enough
/// for root to do it on behalf of an unprivileged service:
///
/// - the open is non-blocking (`O_NONBLOCK`, cleared again before
///   returning), so a FIFO planted at `path` cannot hang the opener, and
///   `O_NOCTTY`;
/// - what was opened must be a regular file (`fstat` on the descriptor):
///   anything else is [`Error::NotRegularFile`];
/// - when this process is root (euid 0), the path must be one only root
///   controls: the file and every directory in which a name is looked up
///   on the way (each ancestor of the resolved file and the directory of
///   each symbolic link followed) are owned by root and not writable by
///   group or others, a root-owned sticky directory such as `/tmp` except.
///   Otherwise [`Error::UnsafeSecretPath`] names the file or directory at
///   fault and the `chown`/`chmod` that fixes it. Symbolic links are fine
///   where that holds (certbot's `live/` links into `archive/`). This is
///   OpenSSH's `StrictModes` turned to protect root: a service user who
///   can write a directory on the way could otherwise make root open
///   another root-only file for it.
///
/// A process that is not root opens only what it could open anyway, so the
/// ownership rule is not applied there.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use lifecycle_handoff::{open_file, Error};
///
/// let dir = tempfile::tempdir().unwrap();
/// let key = dir.path().join("key.pem");
/// std::fs::write(&key, "secret").unwrap();
/// std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
/// assert!(open_file(&key).is_ok());
///
/// let fifo = dir.path().join("fifo");
/// nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
/// assert!(matches!(open_file(&fifo), Err(Error::NotRegularFile { .. }))); // at once
/// ```
pub fn open_file(path: &Path) -> Result<File> {
    let fail = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    // std adds O_CLOEXEC.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.file_type().is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_owned(),
            found: file_kind(&meta),
        });
    }
    // Reads of a regular file never block on O_NONBLOCK anyway; cleared so
    // the descriptor passed on is an ordinary one.
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|e| fail(e.into()))?;
    let flags = OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|e| fail(e.into()))?;
    if nix::unistd::geteuid().is_root() {
        check_secure_path(path, &meta, 0)?;
    }
    Ok(file)
}
