//! The actors' races, 1,000 times each: an abort never hits a connection
//! that reused a closed connection's fd, and a registration racing the
//! registry's shutdown is always aborted (before or after, never missed).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};

use actix_lifecycle::ConnectionRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{figure, scaled, turn};

const ROUNDS: usize = 1_000;
/// Registering threads per round of the shutdown race, and connections each.
const THREADS: usize = 3;
const PER_THREAD: usize = 40;

async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (server, client)
}

/// One echo round through `server`, checked from `client`.
async fn echo<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    server: &mut S,
    client: &mut TcpStream,
    msg: &[u8],
) -> std::io::Result<bool> {
    client.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf).await?;
    server.write_all(&buf).await?;
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).await?;
    Ok(back == msg)
}

#[test]
fn fd_reuse_race_1000_times() {
    let _turn = turn();
    let rounds = scaled(ROUNDS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (reused, b_survived) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut reused = 0;
        let mut b_survived = 0;
        for round in 0..rounds {
            // A's registry; B lives in it too, or in another one.
            let one = ConnectionRegistry::builder()
                .build()
                .expect("registry")
                .handle();
            let other = ConnectionRegistry::builder()
                .build()
                .expect("registry")
                .handle();
            let same = round % 2 == 0;
            let kind = one.kind("test", "t");
            let (shard, other_shard) = (one.new_shard(), other.new_shard());

            let (server_a, mut client_a) = pair(&listener).await;
            let fd_a = server_a.as_raw_fd();
            let mut a = shard.register(&kind).track(server_a);
            let id_a = a.id();
            assert!(echo(&mut a, &mut client_a, b"a").await.expect("echo a"));
            // A's socket closes while its registration lives on.
            let (server_a, guard_a) = a.into_parts();
            drop(server_a);
            drop(client_a);

            let (server_b, mut client_b) = pair(&listener).await;
            if server_b.as_raw_fd() == fd_a {
                reused += 1;
            }
            let b_shard = if same { &shard } else { &other_shard };
            let mut b = b_shard.register(&kind).track(server_b);
            if same {
                assert!(one.abort(id_a), "round {round}: A is live");
            } else {
                assert_eq!(one.shutdown(), 1, "round {round}: only A in A's registry");
            }
            assert!(guard_a.is_aborted(), "round {round}: A aborted");
            assert!(!b.is_aborted(), "round {round}: B must not be aborted");
            let ok = echo(&mut b, &mut client_b, b"b still works")
                .await
                .unwrap_or(false)
                && echo(&mut b, &mut client_b, b"twice").await.unwrap_or(false);
            assert!(
                ok,
                "round {round}: B's socket (fd {fd_a}) was hit by A's abort"
            );
            b_survived += 1;
            drop(guard_a);
            drop(b);
            assert_eq!(
                one.live() + other.live(),
                0,
                "round {round}: registries empty"
            );
        }
        (reused, b_survived)
    });
    figure(
        "races",
        &format!("fd reuse: rounds={rounds} fd number reused={reused} B unharmed={b_survived}"),
    );
    assert_eq!(
        reused, rounds,
        "the kernel did not reuse A's fd in every round"
    );
    assert_eq!(b_survived, rounds);
}

#[test]
fn register_racing_shutdown_1000_times() {
    let _turn = turn();
    let rounds = scaled(ROUNDS);
    let total = THREADS * PER_THREAD;
    let (mut aborted_by_shutdown, mut aborted_at_registration) = (0usize, 0usize);
    for round in 0..rounds {
        let registry = ConnectionRegistry::builder()
            .build()
            .expect("registry")
            .handle();
        let kind = registry.kind("test", "t");
        let start = Arc::new(Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (shard, kind, start) = (registry.new_shard(), kind.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..PER_THREAD)
                        .map(|_| shard.register(&kind))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        start.wait();
        // Let some registrations happen first, varying by round.
        for _ in 0..(round % 50) * 20 {
            std::hint::spin_loop();
        }
        let by_shutdown = registry.shutdown();
        let guards: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("register thread"))
            .collect();
        assert_eq!(guards.len(), total);
        let not_aborted = guards.iter().filter(|g| !g.is_aborted()).count();
        assert_eq!(
            not_aborted, 0,
            "round {round}: {not_aborted} connections escaped the shutdown"
        );
        let snap = registry.snapshot();
        assert_eq!(snap.live, total as u64, "round {round}: live");
        assert_eq!(snap.accepted(), total as u64, "round {round}: accepted");
        assert_eq!(
            snap.aborted(),
            total as u64,
            "round {round}: each aborted exactly once"
        );
        aborted_by_shutdown += by_shutdown;
        aborted_at_registration += total - by_shutdown;
        drop(guards);
        assert_eq!(
            registry.live(),
            0,
            "round {round}: live after the guards dropped"
        );
    }
    figure(
        "races",
        &format!(
            "register vs shutdown: rounds={rounds} connections={} aborted by shutdown={aborted_by_shutdown} \
             registered after it (aborted at once)={aborted_at_registration}",
            rounds * total
        ),
    );
    assert!(
        aborted_by_shutdown > 0 && aborted_at_registration > 0,
        "the race was not exercised on both sides"
    );
}
