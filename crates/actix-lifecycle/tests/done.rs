//! `Done` resolves at once when nothing is open, serves any number of
//! waiters, and resolves after an abort once handlers let go.

mod common;

use std::time::Duration;

use actix::{Actor, Addr};
use actix_lifecycle::{
    ConnectionRegistry, Done, Harness, RegistryHandle, Shutdown, Snapshot, Start,
};
use common::{echo, logger, roundtrip};

const LIMIT: Duration = Duration::from_secs(10);

/// A started registry and its handle.
fn registry() -> (RegistryHandle, Addr<ConnectionRegistry>) {
    let registry = ConnectionRegistry::builder()
        .logger(logger())
        .build()
        .unwrap();
    (registry.handle(), registry.start())
}

#[actix::test]
async fn done_resolves_at_once_when_empty() {
    let (handle, addr) = registry();
    tokio::time::timeout(LIMIT, addr.send(Done))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(LIMIT, handle.done()).await.unwrap();
    // Also after connections came and went.
    let shard = handle.new_shard();
    drop(shard.register(&handle.kind("p", "l")));
    tokio::time::timeout(LIMIT, addr.send(Done))
        .await
        .unwrap()
        .unwrap();
}

#[actix::test]
async fn many_waiters_resolve_when_the_last_connection_closes() {
    let (handle, addr) = registry();
    // Paused time (no socket here): each sleep below returns only once
    // every task has run as far as it can, so "not yet resolved" is
    // checked after the waiters had every chance, without real waiting.
    tokio::time::pause();
    let kind = handle.kind("p", "l");
    // Two shards, as two arbiters would have.
    let (s1, s2) = (handle.new_shard(), handle.new_shard());
    let mut guards = vec![s1.register(&kind), s2.register(&kind), s2.register(&kind)];

    let mut waiters = Vec::new();
    for i in 0..20 {
        if i % 2 == 0 {
            let addr = addr.clone();
            waiters.push(tokio::spawn(async move { addr.send(Done).await.unwrap() }));
        } else {
            waiters.push(tokio::spawn(handle.done()));
        }
    }
    while let Some(g) = guards.pop() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "no waiter may resolve while {} connection(s) remain",
            guards.len() + 1
        );
        drop(g);
    }
    for w in waiters {
        tokio::time::timeout(LIMIT, w).await.unwrap().unwrap();
    }
}

#[actix::test]
async fn done_resolves_after_abort() {
    let harness = Harness::builder()
        .logger(logger())
        .tcp("e", "echo", echo())
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = tokio::net::TcpStream::connect(info.tcp("e").unwrap())
            .await
            .unwrap();
        assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
        clients.push(c);
    }
    assert_eq!(harness.send(Snapshot).await.unwrap().live, 5);
    let waiter = {
        let h = harness.clone();
        tokio::spawn(async move { h.send(Done).await.unwrap() })
    };
    // Paused time just for this check: the sleep returns once every task
    // of this runtime is idle (the waiter had every chance to resolve);
    // real time again for the sockets.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::time::resume();
    assert!(
        !waiter.is_finished(),
        "clients are still connected and silent"
    );
    // The clients stay connected: only the abort ends their handlers.
    assert_eq!(info.lifecycle.registry().send(Shutdown).await.unwrap(), 5);
    tokio::time::timeout(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(harness.send(Snapshot).await.unwrap().live, 0);
    drop(clients);
}
