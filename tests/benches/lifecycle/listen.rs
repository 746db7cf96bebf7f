//! Listeners for every server in the bench, ours and baselines alike, with
//! the backlog set explicitly.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// The listen backlog of every listener in the bench. tokio and std use
/// 128, which makes clients wait a second (SYN retransmit) per overflow
/// under load and ruins the figures.
pub(crate) const BACKLOG: i32 = 1024;

/// A non-blocking TCP listener on 127.0.0.1, port chosen by the kernel,
/// with `SO_REUSEADDR` and a backlog of [`BACKLOG`].
pub(crate) fn loopback_listener() -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
