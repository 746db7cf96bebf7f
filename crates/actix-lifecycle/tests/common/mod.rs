//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod descriptors;

use std::future::Future;
use std::time::{Duration, Instant};

use actix_lifecycle::{ConnHandler, Lifecycle, LifecycleBuilder};
use lifecycle_handoff::{Inventory, PassedListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A logger: discarded unless `TEST_LOG=1`, then terminal output.
pub fn logger() -> slog::Logger {
    use slog::Drain;
    if std::env::var_os("TEST_LOG").is_some() {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog::Logger::root(drain, slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

/// A lifecycle over `listeners` as a test wants it: the test logger, no
/// signal handlers, the actix `System` left running when it stops.
pub fn builder(listeners: Vec<PassedListener>) -> LifecycleBuilder {
    Lifecycle::builder(Inventory {
        listeners,
        files: vec![],
    })
    .logger(logger())
    .handle_signals(false)
    .stop_system(false)
}

/// [`builder`] over `listeners`, started (inside a running actix `System`).
pub fn start(listeners: Vec<PassedListener>) -> Lifecycle {
    builder(listeners).start().unwrap()
}

/// Echoes bytes until end-of-file or an error.
pub fn echo() -> ConnHandler {
    ConnHandler::new(|mut conn| async move {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn roundtrip<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.unwrap();
    got
}

/// The value of a metric sample line in prometheus text format, e.g.
/// `lifecycle_connections{listener="a",protocol="echo"}`.
pub fn metric(registry: &prometheus::Registry, sample: &str) -> Option<f64> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A TCP listener on a free loopback port, as the inventory passes it, and
/// its address.
pub fn tcp(name: &str) -> (lifecycle_handoff::PassedListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (
        lifecycle_handoff::PassedListener {
            spec: lifecycle_handoff::ListenerSpec::tcp(name, addr),
            fd: l.into(),
        },
        addr,
    )
}

/// A lifecycle started over one TCP listener `name` (see [`tcp`]),
/// publishing its metrics on a registry of its own: the lifecycle, the
/// listener's address and the registry.
pub fn with_metrics(name: &str) -> (Lifecycle, std::net::SocketAddr, prometheus::Registry) {
    let (listener, addr) = tcp(name);
    let metrics = prometheus::Registry::new();
    let lifecycle = builder(vec![listener]).metrics(&metrics).start().unwrap();
    (lifecycle, addr, metrics)
}
