//! The ListenerActor over real TCP and Unix sockets: serving, stopping,
//! refusing bad or missing sockets, spreading over arbiters, recipient
//! handlers, panicking handlers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use actix_lifecycle::{
    Accepted, ConnHandler, GetListenerInfo, Lifecycle, ListenerActor, Snapshot, StopAccepting,
};
use common::{echo, eventually, logger, roundtrip, tcp};
use lifecycle_handoff::{Inventory, ListenAddress, ListenerSpec, PassedListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

fn unix(name: &str, path: &std::path::Path) -> PassedListener {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    PassedListener {
        spec: ListenerSpec::unix(name, path),
        fd: l.into(),
    }
}

async fn stopped(addr: &Addr<ListenerActor>) -> bool {
    let addr = addr.clone();
    eventually(LIMIT, move || {
        let addr = addr.clone();
        async move { !addr.connected() }
    })
    .await
}

#[actix::test]
async fn tcp_and_unix_listeners_serve_then_stop_and_report_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t, unix("u", &path)]);
    let lt = lifecycle.serve("t", "echo", echo());
    let lu = lifecycle.serve("u", "echo", echo());

    let info = lt.send(GetListenerInfo).await.unwrap();
    assert_eq!(info.address, Some(ListenAddress::Tcp(taddr)));
    assert!(info.accepting);
    let info = lu.send(GetListenerInfo).await.unwrap();
    assert_eq!(info.address, Some(ListenAddress::Unix(path.clone())));

    for i in 0..3u8 {
        let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
        assert_eq!(roundtrip(&mut c, &[i]).await, [i]);
    }
    for i in 0..2u8 {
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert_eq!(roundtrip(&mut c, &[i]).await, [i]);
    }
    assert_eq!(lt.send(StopAccepting).await.unwrap(), 3);
    assert_eq!(lu.send(StopAccepting).await.unwrap(), 2);
    assert!(
        tokio::net::TcpStream::connect(taddr).await.is_err(),
        "TCP socket closed"
    );
    assert!(
        tokio::net::UnixStream::connect(&path).await.is_err(),
        "Unix socket closed"
    );
    let snap = lifecycle.connections().snapshot();
    assert_eq!(snap.kind("echo", "t").unwrap().accepted, 3);
    assert_eq!(snap.kind("echo", "u").unwrap().accepted, 2);
}

#[actix::test]
async fn an_unknown_or_already_taken_listener_stops_the_actor() {
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    // Only this actor stops: by default its failure would stop the lifecycle.
    let log_only = |name| {
        (lifecycle.listener(name, "echo", echo()))
            .on_failure(actix_lifecycle::OnFailure::LogOnly)
            .start()
    };
    let unknown = log_only("nope");
    assert!(stopped(&unknown).await, "unknown name: the actor stops");

    let first = lifecycle.serve("t", "echo", echo());
    assert!(first.send(GetListenerInfo).await.unwrap().accepting);
    let second = log_only("t");
    assert!(stopped(&second).await, "second take: the actor stops");
    let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
    assert_eq!(
        roundtrip(&mut c, b"first still serves").await,
        b"first still serves"
    );
}

#[actix::test]
async fn a_socket_that_does_not_match_its_spec_is_refused() {
    // Bound but not listening.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let not_listening = PassedListener {
        spec: ListenerSpec::tcp("quiet", addr),
        fd: s.into(),
    };
    // A TCP listener declared as Unix.
    let (mut wrong, _) = tcp("wrong");
    wrong.spec = ListenerSpec::unix("wrong", "/nonexistent.sock");
    let lifecycle = common::start(vec![not_listening, wrong]);
    let a = lifecycle.serve("quiet", "x", echo());
    let b = lifecycle.serve("wrong", "x", echo());
    assert!(
        stopped(&a).await,
        "a socket that is not listening is refused"
    );
    assert!(
        stopped(&b).await,
        "a socket of the wrong network is refused"
    );
}

#[actix::test]
async fn connections_are_spread_round_robin_over_arbiters() {
    let arbiters = [actix::Arbiter::new(), actix::Arbiter::new()];
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    let where_served = ConnHandler::new(|mut conn| async move {
        let id = format!("{:?}\n", std::thread::current().id());
        let _ = conn.write_all(id.as_bytes()).await;
        let mut buf = [0u8; 1];
        let _ = conn.read(&mut buf).await;
    });
    let _l = lifecycle
        .listener("t", "where", where_served)
        .arbiters(arbiters.iter().map(|a| a.handle()).collect())
        .start();
    let mut threads = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while c.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        threads.push(String::from_utf8(line).unwrap());
        clients.push(c);
    }
    let me = format!("{:?}", std::thread::current().id());
    let distinct: HashSet<&String> = threads.iter().collect();
    assert_eq!(distinct.len(), 2, "two arbiters served: {threads:?}");
    assert!(!distinct.contains(&me), "none on the listener's thread");
    assert_eq!(threads[0], threads[2], "round robin");
    assert_eq!(threads[1], threads[3], "round robin");
    assert_eq!(lifecycle.connections().live(), 6);
    drop(clients);
    tokio::time::timeout(LIMIT, lifecycle.connections().done())
        .await
        .unwrap();
    for a in arbiters {
        a.stop();
    }
}

#[actix::test]
async fn an_arbiter_that_stops_leaves_the_rotation_and_no_connection_is_lost() {
    let arbiters = [actix::Arbiter::new(), actix::Arbiter::new()];
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    let where_served = ConnHandler::new(|mut conn| async move {
        let id = format!("{:?}", std::thread::current().id());
        let _ = conn.write_all(id.as_bytes()).await;
    });
    let _l = lifecycle
        .listener("t", "where", where_served)
        .arbiters(arbiters.iter().map(|a| a.handle()).collect())
        .start();
    async fn served_on(addr: std::net::SocketAddr) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(LIMIT, c.read_to_string(&mut got))
            .await
            .expect("the connection was answered, not dropped")
            .unwrap();
        got
    }
    let first = served_on(taddr).await;
    let [a, b] = arbiters;
    a.stop();
    a.join().unwrap();
    // Every connection from now on is served (the stopped arbiter's turn
    // goes to the other), four in a row on the arbiter left.
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(served_on(taddr).await);
    }
    assert!(after.iter().all(|t| !t.is_empty()), "{after:?}");
    assert!(after.windows(2).all(|w| w[0] == w[1]), "{after:?}");
    // The other arbiter stops too: the listener's own arbiter serves.
    b.stop();
    b.join().unwrap();
    let me = format!("{:?}", std::thread::current().id());
    assert_eq!(served_on(taddr).await, me);
    assert!(!first.is_empty());
}

#[actix::test]
async fn connections_on_other_arbiters_are_aborted_and_report_their_peer() {
    let arbiters = [actix::Arbiter::new(), actix::Arbiter::new()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t, unix("u", &path)]);
    // Tell the client who it is, then echo until end-of-file.
    let peer_then_echo = ConnHandler::new(|mut conn| async move {
        let peer = format!("{}\n", conn.peer());
        if conn.write_all(peer.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = conn.read(&mut buf).await {
            if conn.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
    lifecycle
        .listener("t", "echo", peer_then_echo.clone())
        .arbiters(handles.clone())
        .start();
    lifecycle
        .listener("u", "echo", peer_then_echo)
        .arbiters(handles)
        .start();

    async fn first_line<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }
    let mut tcp_clients = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
        assert_eq!(
            first_line(&mut c).await,
            c.local_addr().unwrap().to_string()
        );
        tcp_clients.push(c);
    }
    let mut u = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert_eq!(first_line(&mut u).await, "unix:(unnamed)");
    assert_eq!(roundtrip(&mut u, b"x").await, b"x");
    assert_eq!(lifecycle.connections().live(), 5);

    // Abort from this thread wakes the reads waiting on the arbiters.
    assert_eq!(lifecycle.connections().shutdown(), 5);
    tokio::time::timeout(LIMIT, lifecycle.connections().done())
        .await
        .unwrap();
    for mut c in tcp_clients {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(LIMIT, c.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty());
    }
    for a in arbiters {
        a.stop();
    }
}

#[actix::test]
async fn a_listener_started_in_another_arbiter_serves_there() {
    let arbiter = actix::Arbiter::new();
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    let where_served = ConnHandler::new(|mut conn| async move {
        let id = format!("{:?}", std::thread::current().id());
        let _ = conn.write_all(id.as_bytes()).await;
    });
    let l = lifecycle
        .listener("t", "where", where_served)
        .start_in(&arbiter.handle());
    assert!(l.send(GetListenerInfo).await.unwrap().accepting);
    let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).await.unwrap();
    assert!(!got.is_empty());
    assert_ne!(got, format!("{:?}", std::thread::current().id()));
    arbiter.stop();
}

/// An actor that echoes connections sent to it as `Accepted`.
struct EchoActor;

impl Actor for EchoActor {
    type Context = Context<Self>;
}

impl Handler<Accepted> for EchoActor {
    type Result = ();

    fn handle(&mut self, Accepted(mut conn): Accepted, _ctx: &mut Self::Context) {
        actix::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[actix::test]
async fn a_recipient_handler_gets_accepted_connections() {
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    let actor = EchoActor.start();
    lifecycle.serve("t", "echo", ConnHandler::recipient(actor.recipient()));
    let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"via recipient").await, b"via recipient");
    assert_eq!(lifecycle.registry().send(Snapshot).await.unwrap().live, 1);
    drop(c);
    tokio::time::timeout(LIMIT, lifecycle.connections().done())
        .await
        .unwrap();
}

#[actix::test]
async fn a_panicking_handler_still_unregisters_its_connection() {
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t]);
    let fragile = ConnHandler::new(|mut conn| async move {
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        if &buf == b"panic" {
            panic!("handler panics on purpose (expected in this test)");
        }
        loop {
            conn.write_all(&buf).await.unwrap();
            if conn.read_exact(&mut buf).await.is_err() {
                break;
            }
        }
    });
    lifecycle.serve("t", "fragile", fragile);
    let mut ok = tokio::net::TcpStream::connect(taddr).await.unwrap();
    assert_eq!(roundtrip(&mut ok, b"hello").await, b"hello");
    let mut bad = tokio::net::TcpStream::connect(taddr).await.unwrap();
    bad.write_all(b"panic").await.unwrap();
    let conns = lifecycle.connections().clone();
    assert!(
        eventually(LIMIT, || {
            let conns = conns.clone();
            async move { conns.live() == 1 }
        })
        .await,
        "the panicking connection was unregistered during unwinding"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, bad.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(
        roundtrip(&mut ok, b"still").await,
        b"still",
        "others keep being served"
    );
}

#[actix::test]
async fn two_listeners_with_one_name_are_refused_at_start() {
    let (a, _) = tcp("smtp");
    let (b, _) = tcp("smtp");
    let inventory = Inventory {
        listeners: vec![a, b],
        files: vec![],
    };
    let err = Lifecycle::builder(inventory)
        .logger(logger())
        .handle_signals(false)
        .start()
        .expect_err("a repeated listener name is refused");
    assert!(
        matches!(&err, actix_lifecycle::LifecycleError::DuplicateListener { name } if name == "smtp"),
        "{err:?}"
    );
    assert!(err.to_string().contains("unique name"), "{err}");
}

#[actix::test]
async fn set_nodelay_sets_tcp_nodelay_and_is_a_no_op_on_unix_streams() {
    use actix_lifecycle::Stream;
    // Each connection answers the option's value after the call: 1 or 0
    // for TCP, `u` for a Unix-domain stream (no such option).
    let nodelay = || {
        ConnHandler::new(|mut conn| async move {
            let before = match conn.stream().get_ref() {
                Stream::Tcp(s) => s.nodelay().unwrap(),
                Stream::Unix(_) => false,
            };
            conn.set_nodelay(true).unwrap();
            let answer = match conn.stream().get_ref() {
                Stream::Tcp(s) => [u8::from(before), u8::from(s.nodelay().unwrap())],
                Stream::Unix(_) => *b"uu",
            };
            let _ = conn.write_all(&answer).await;
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (t, taddr) = tcp("t");
    let lifecycle = common::start(vec![t, unix("u", &path)]);
    let _lt = lifecycle.serve("t", "nodelay", nodelay());
    let _lu = lifecycle.serve("u", "nodelay", nodelay());

    let mut answer = [0u8; 2];
    let mut c = tokio::net::TcpStream::connect(taddr).await.unwrap();
    c.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [0, 1], "off by default, on after set_nodelay(true)");
    let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
    c.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"uu");
}
