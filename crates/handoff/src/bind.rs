//! Binding listeners and opening privileged files in this process.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, Result};
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

/// Opens `path` read-only and close-on-exec.
pub fn open_file(path: &Path) -> Result<File> {
    // std opens with O_CLOEXEC.
    File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })
}
