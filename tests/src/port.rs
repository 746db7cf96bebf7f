//! Free loopback ports for servers under test.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// Where the kernel's own range of ephemeral ports is described.
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Lowest port [`free_port`] hands out: above the registered services
/// most machines run.
const LOWEST: u16 = 16_384;
/// How many ports to try before giving up.
const ATTEMPTS: usize = 256;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is chosen at random *below* the kernel's ephemeral range
/// (`ip_local_port_range`, usually 32768–60999) and checked by binding it.
/// The kernel never hands such a port to `bind(port 0)` or to an outgoing
/// connection, so while tests elsewhere on the machine open thousands of
/// connections, only another explicit bind can take it before the server
/// under test does. Where the server can bind port 0 itself and report its
/// address, prefer that; use this for programs that must be told a port,
/// such as `systemd-socket-activate -l 127.0.0.1:PORT`.
///
/// Falls back to a kernel-chosen ephemeral port when the range cannot be
/// read or leaves no room below it.
///
/// ```
/// let port = lifecycle_tests::free_port()?;
/// assert_ne!(port, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn free_port() -> io::Result<u16> {
    let low = ephemeral_low().unwrap_or(LOWEST);
    if low > LOWEST {
        let span = u64::from(low - LOWEST);
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        for attempt in 0..ATTEMPTS as u64 {
            let offset = (start.wrapping_add(attempt)) % span;
            let port = LOWEST + u16::try_from(offset).unwrap_or(0);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range, if readable.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string(EPHEMERAL_RANGE).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_port_can_be_bound_again() {
        let port = free_port().unwrap();
        // Another test of this process may fork (spawning a child) while the
        // probe socket is open; the child holds a copy until its exec closes
        // it. Give that a moment instead of failing on it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("port {port} from free_port cannot be bound: {e}"),
            }
        }
    }

    #[test]
    fn the_port_is_below_the_ephemeral_range() {
        let Some(low) = ephemeral_low() else {
            return;
        };
        if low > LOWEST {
            let port = free_port().unwrap();
            assert!(
                (LOWEST..low).contains(&port),
                "{port} not in {LOWEST}..{low}"
            );
        }
    }
}
