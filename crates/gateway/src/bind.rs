//! Binding the configured listeners in this process (the hand-off's
//! `immediate` mode: no privileges needed, development and
//! `CAP_NET_BIND_SERVICE` setups), with the listen backlog set explicitly.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use lifecycle_handoff::{Inventory, ListenAddress, ListenerSpec, PassedListener};
use socket2::{Domain, SockAddr, Socket, Type};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot bind listener `{listener}` on {address}: {source}{}",
    hint(source)
)]
pub struct BindError {
    /// The listener's name.
    pub listener: String,
    /// The configured address.
    pub address: ListenAddress,
    /// The error from the kernel.
    #[source]
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => " (another process listens there; stop it or change `address`)",
        Some(libc::EACCES) => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; see the README)"
        }
        Some(libc::EADDRNOTAVAIL) => " (no interface of this machine has that address)",
        _ => "",
    }
}

/// Binds every spec, in order, into an [`Inventory`]. TCP listeners
/// declared with port 0 carry the port the kernel chose.
pub fn bind_all(specs: &[ListenerSpec]) -> Result<Inventory, BindError> {
    let mut inventory = Inventory::default();
    for spec in specs {
        let passed = bind(spec).map_err(|source| BindError {
            listener: spec.name().to_owned(),
            address: spec.address().clone(),
            source,
        })?;
        inventory.listeners.push(passed);
    }
    Ok(inventory)
}

fn bind(spec: &ListenerSpec) -> io::Result<PassedListener> {
    let backlog = i32::try_from(spec.backlog()).unwrap_or(i32::MAX);
    let (socket, address) = match spec.address() {
        ListenAddress::Tcp(addr) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&(*addr).into())?;
            socket.listen(backlog)?;
            let bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("bound TCP socket has no IP address"))?;
            (socket, ListenAddress::Tcp(bound))
        }
        ListenAddress::Unix(path) => {
            remove_stale_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket.listen(backlog)?;
            (socket, ListenAddress::Unix(path.clone()))
        }
    };
    socket.set_nonblocking(true)?;
    Ok(PassedListener {
        spec: ListenerSpec::new(spec.name(), address).with_backlog(spec.backlog()),
        fd: socket.into(),
    })
}

/// Removes a Unix socket file nobody listens on (left by a crash); a live
/// one is left alone and the bind fails with EADDRINUSE.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_port_zero_and_reports_the_port() {
        let specs = [
            ListenerSpec::tcp("a", "127.0.0.1:0".parse().unwrap()).with_backlog(7),
            ListenerSpec::tcp("b", "[::1]:0".parse().unwrap()),
        ];
        let inv = match bind_all(&specs) {
            Ok(inv) => inv,
            // IPv6 may be missing in a container: bind only the v4 one.
            Err(e) if e.listener == "b" => bind_all(&specs[..1]).unwrap(),
            Err(e) => panic!("{e}"),
        };
        let ListenAddress::Tcp(addr) = inv.listeners[0].spec.address() else {
            panic!("not tcp");
        };
        assert_ne!(addr.port(), 0);
        assert_eq!(inv.listeners[0].spec.backlog(), 7);
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ListenerSpec::tcp("smtp", taken.local_addr().unwrap());
        let err = bind_all(&[spec]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot bind listener `smtp` on 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("another process listens there"), "{text}");
    }

    #[test]
    fn unix_sockets_replace_stale_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let spec = ListenerSpec::unix("u", &path);
        let first = bind_all(std::slice::from_ref(&spec)).unwrap();
        // Live: a second bind fails.
        assert!(bind_all(std::slice::from_ref(&spec)).is_err());
        drop(first);
        // Stale (nobody listens): replaced.
        let again = bind_all(&[spec]).unwrap();
        assert_eq!(again.listeners.len(), 1);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }
}
