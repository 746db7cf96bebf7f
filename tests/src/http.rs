//! A plain HTTP/1.0 `GET`, with no client library: what the tests ask the
//! gateway's and the examples' HTTP listeners.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status and body of `GET path` over HTTP/1.0 to `addr`, each read
/// waiting at most `timeout`; status 0 when the answer has no status line.
///
/// ```no_run
/// use std::time::Duration;
///
/// let addr = "127.0.0.1:8080".parse().unwrap();
/// let (status, body) = lifecycle_tests::http_get(addr, "/metrics", Duration::from_secs(5))?;
/// assert_eq!(status, 200, "{body}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}
