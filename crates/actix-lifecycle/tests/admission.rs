//! Admission control (issue 14): limits checked where connections register,
//! exact across shards under concurrency, changeable at run time by a
//! message, visible in the snapshot and the metrics; refused connections
//! get the handler's busy line and are closed, never registered.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use actix::Actor;
use actix_lifecycle::{
    ConnHandler, ConnectionRegistry, Limits, Rate, RefuseReason, SetLimits, Snapshot,
};
use common::{eventually, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const THREADS: usize = 4;
const TRIES: usize = 500;

/// Every thread (each on its own shard, as arbiters are) tries `TRIES`
/// admissions from `ip(thread, i)` at once; returns the guards admitted.
fn race(
    limits: Limits,
    ip: impl Fn(usize, usize) -> IpAddr + Send + Sync + 'static,
) -> (actix_lifecycle::RegistryHandle, usize) {
    let handle = ConnectionRegistry::builder()
        .limits(limits)
        .build()
        .unwrap()
        .handle();
    let kind = handle.kind("p", "l");
    let start = Arc::new(Barrier::new(THREADS));
    let ip = Arc::new(ip);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (handle, kind, start, ip) =
                (handle.clone(), kind.clone(), start.clone(), ip.clone());
            std::thread::spawn(move || {
                let shard = handle.new_shard();
                start.wait();
                (0..TRIES)
                    .filter_map(|i| shard.admit(&kind, Some(ip(t, i))).ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let guards: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let admitted = guards.len();
    assert_eq!(handle.live(), admitted as u64);
    // Keep them live for the caller's snapshot.
    std::mem::forget(guards);
    (handle, admitted)
}

#[test]
fn listener_cap_is_exact_across_shards_under_concurrency() {
    let (handle, admitted) = race(Limits::none().max_connections(100), |t, i| {
        IpAddr::V4(Ipv4Addr::from((t * TRIES + i) as u32 + 1))
    });
    let snap = handle.snapshot();
    let k = snap.kind("p", "l").unwrap();
    eprintln!(
        "listener cap 100: admitted {admitted}, refused {:?}",
        k.refused
    );
    assert_eq!(admitted, 100);
    assert_eq!(k.live, 100);
    assert_eq!(k.accepted, 100);
    assert_eq!(k.refused.listener_full, (THREADS * TRIES - 100) as u64);
    assert_eq!(k.refused.total(), k.refused.listener_full);
    assert_eq!(k.limits.get_max_connections(), Some(100));
}

#[test]
fn address_cap_is_exact_across_shards_under_concurrency() {
    // Two client networks, every thread alternating between them.
    let (handle, admitted) = race(Limits::none().max_per_address(30), |_, i| {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 2) as u8 + 1))
    });
    let snap = handle.snapshot();
    let k = snap.kind("p", "l").unwrap();
    eprintln!(
        "address cap 30, 2 networks: admitted {admitted}, refused {:?}",
        k.refused
    );
    assert_eq!(admitted, 60);
    assert_eq!(k.refused.address_full, (THREADS * TRIES - 60) as u64);
    assert_eq!(snap.tracked_networks, 2);
}

#[test]
fn rate_is_exact_across_shards_under_concurrency() {
    // An hour's period: no token comes back while the test runs.
    let rate = Rate::new(25, Duration::from_secs(3600)).unwrap();
    let (handle, admitted) = race(Limits::none().rate_per_address(rate), |t, _| {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, t as u16 + 1))
    });
    let k = handle.snapshot().kind("p", "l").cloned().unwrap();
    eprintln!(
        "rate 25/h, one /64 from 4 addresses: admitted {admitted}, refused {:?}",
        k.refused
    );
    // Four addresses of one /64 are one network: 25 in all.
    assert_eq!(admitted, 25);
    assert_eq!(k.refused.rate, (THREADS * TRIES - 25) as u64);
}

#[test]
fn places_come_back_when_connections_end_and_networks_are_forgotten() {
    let handle = ConnectionRegistry::builder()
        .limits(Limits::none().max_connections(2).max_per_address(1))
        .build()
        .unwrap()
        .handle();
    let (kind, shard) = (handle.kind("p", "l"), handle.new_shard());
    let a_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));
    let b_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)));
    let c_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3)));
    let a = shard.admit(&kind, a_ip).unwrap();
    let b = shard.admit(&kind, b_ip).unwrap();
    assert_eq!(
        shard.admit(&kind, c_ip).unwrap_err(),
        RefuseReason::ListenerFull
    );
    assert_eq!(handle.snapshot().tracked_networks, 2);
    drop(a);
    assert_eq!(
        handle.snapshot().tracked_networks,
        1,
        "a's network is forgotten"
    );
    let c = shard.admit(&kind, c_ip).unwrap();
    // Unregistering by id (not the guard) gives the places back too, once.
    assert!(handle.unregister(b.id()));
    assert!(!handle.unregister(b.id()));
    drop(b);
    let b2 = shard.admit(&kind, b_ip).unwrap();
    assert_eq!(
        shard.admit(&kind, a_ip).unwrap_err(),
        RefuseReason::ListenerFull
    );
    drop((c, b2));
    assert_eq!(handle.live(), 0);
    assert_eq!(handle.snapshot().tracked_networks, 0);
    // Unix peers (no address) are held to the listener's cap only.
    let u = [
        shard.admit(&kind, None).unwrap(),
        shard.admit(&kind, None).unwrap(),
    ];
    assert_eq!(
        shard.admit(&kind, None).unwrap_err(),
        RefuseReason::ListenerFull
    );
    drop(u);
}

#[actix::test]
async fn set_limits_changes_them_at_run_time_and_the_snapshot_shows_them() {
    let registry = ConnectionRegistry::builder().build().unwrap();
    let handle = registry.handle();
    let addr = registry.start();
    let (kind, shard) = (handle.kind("smtp", "mx"), handle.new_shard());
    let other = handle.kind("imap", "imap");
    let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let first = shard.admit(&kind, ip).unwrap();
    let second = shard.admit(&kind, ip).unwrap();

    // The default: every listener without its own follows it.
    addr.send(SetLimits::default_limits(Limits::none().max_connections(2)))
        .await
        .unwrap();
    assert_eq!(
        shard.admit(&kind, ip).unwrap_err(),
        RefuseReason::ListenerFull
    );
    let snap = addr.send(Snapshot).await.unwrap();
    assert_eq!(snap.default_limits.get_max_connections(), Some(2));
    assert_eq!(
        snap.kind("smtp", "mx")
            .unwrap()
            .limits
            .get_max_connections(),
        Some(2)
    );

    // One listener's own limits: the other keeps the default.
    addr.send(SetLimits::listener(
        "smtp",
        "mx",
        Some(Limits::none().max_connections(3)),
    ))
    .await
    .unwrap();
    let third = shard.admit(&kind, ip).unwrap();
    assert_eq!(
        shard.admit(&kind, ip).unwrap_err(),
        RefuseReason::ListenerFull
    );
    let imap: Vec<_> = (0..2).map(|_| shard.admit(&other, ip).unwrap()).collect();
    assert_eq!(
        shard.admit(&other, ip).unwrap_err(),
        RefuseReason::ListenerFull
    );

    // A new default leaves a listener with its own limits alone ...
    addr.send(SetLimits::default_limits(Limits::none()))
        .await
        .unwrap();
    assert_eq!(handle.limits(&kind).get_max_connections(), Some(3));
    assert!(shard.admit(&other, ip).is_ok());
    // ... until it follows the default again.
    addr.send(SetLimits::listener("smtp", "mx", None))
        .await
        .unwrap();
    let fourth = shard.admit(&kind, ip).unwrap();

    let snap = addr.send(Snapshot).await.unwrap();
    let mx = snap.kind("smtp", "mx").unwrap();
    assert_eq!(mx.limits, Limits::none());
    assert_eq!((mx.live, mx.accepted, mx.refused.listener_full), (4, 4, 2));
    assert_eq!(snap.kind("imap", "imap").unwrap().refused.listener_full, 1);
    assert_eq!(snap.refused(RefuseReason::ListenerFull), 3);
    drop((first, second, third, fourth, imap));
}

/// A listener with a cap of 2 and a busy line: the third client reads the
/// busy line, then end-of-file; it is never registered, and the metrics
/// count it.
#[actix::test]
async fn a_refused_connection_gets_the_busy_line_and_is_closed() {
    let (lifecycle, addr, metrics) = common::with_metrics("t");
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let handler = ConnHandler::new(move |mut conn| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let _ = conn.write_all(b"hello\n").await;
            let mut buf = [0u8; 16];
            let _ = conn.read(&mut buf).await;
        }
    })
    .on_refused(|reason| format!("busy {reason}\n").into_bytes());
    lifecycle
        .listener("t", "line", handler)
        .limits(Limits::none().max_connections(2))
        .start();
    let connections = lifecycle.connections().clone();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 6];
        c.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello\n");
        held.push(c);
    }
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), refused.read_to_end(&mut reply))
        .await
        .expect("the server closes a refused connection")
        .unwrap();
    assert_eq!(reply, b"busy listener_full\n");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(connections.live(), 2);
    let sample = r#"lifecycle_refused_total{listener="t",protocol="line",reason="listener_full"}"#;
    assert_eq!(metric(&metrics, sample), Some(1.0));
    let zero = r#"lifecycle_refused_total{listener="t",protocol="line",reason="rate"}"#;
    assert_eq!(metric(&metrics, zero), Some(0.0));
    // A place frees up: the next client is served.
    drop(held.pop());
    let c = connections.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let c = c.clone();
            async move { c.live() == 1 }
        })
        .await
    );
    let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = [0u8; 6];
    next.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello\n");
}
