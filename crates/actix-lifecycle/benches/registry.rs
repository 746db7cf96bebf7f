//! Register+unregister pairs per second through the public guard API,
//! against baselines measured in the same run:
//!
//! * `mutex_hashmap`: one `Mutex<HashMap>` shared by every thread (mox's
//!   design: a global map of connections);
//! * `actix_do_send`: an empty actix `do_send` pair (two messages) to an
//!   actor on the same thread, and on another thread.
//!
//! Each figure is reported as elements (pairs) per second. Run with
//! `cargo bench -p actix-lifecycle --bench registry`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler, Message};
use actix_lifecycle::{ConnKind, ConnectionRegistry, RegistryShard};
use criterion::{criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};

/// Runs `work(thread_index, iters)` on `threads` threads started together
/// and returns the wall time from the common start to the last finish.
fn on_threads<F>(threads: usize, iters: u64, work: F) -> Duration
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (work, barrier) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                work(i, iters);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn registry_pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("register_unregister_pairs");
    group
        .sampling_mode(SamplingMode::Linear)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));

        // Ours: one shard per thread, as one per arbiter.
        let registry = ConnectionRegistry::builder()
            .metrics(&prometheus::Registry::new())
            .build()
            .unwrap();
        let handle = registry.handle();
        let kind: ConnKind = handle.kind("smtp", "mx");
        let shards: Arc<Vec<RegistryShard>> =
            Arc::new((0..threads).map(|_| handle.new_shard()).collect());
        group.bench_with_input(
            BenchmarkId::new("guard", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let (shards, kind) = (shards.clone(), kind.clone());
                    on_threads(threads, iters, move |i, iters| {
                        let shard = &shards[i];
                        for _ in 0..iters {
                            black_box(shard.register(&kind));
                        }
                    })
                })
            },
        );
        assert_eq!(handle.live(), 0);

        // Baseline: a global Mutex<HashMap> and a global id counter.
        let map: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
        let next = Arc::new(AtomicU64::new(0));
        group.bench_with_input(
            BenchmarkId::new("mutex_hashmap", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let (map, next) = (map.clone(), next.clone());
                    on_threads(threads, iters, move |_, iters| {
                        for _ in 0..iters {
                            let id = next.fetch_add(1, Ordering::Relaxed);
                            map.lock().unwrap().insert(id, Instant::now());
                            black_box(map.lock().unwrap().remove(&id));
                        }
                    })
                })
            },
        );
    }

    // Baselines: an empty do_send pair (two messages) to an actix actor.
    group.throughput(Throughput::Elements(1));
    group.bench_function("actix_do_send/same_thread", |b| {
        b.iter_custom(|iters| {
            actix::System::new().block_on(async move {
                let addr = Sink.start();
                let start = Instant::now();
                for _ in 0..iters {
                    addr.do_send(Ping);
                    addr.do_send(Ping);
                }
                addr.send(Ping).await.unwrap();
                start.elapsed()
            })
        })
    });
    group.bench_function("actix_do_send/cross_thread", |b| {
        let arbiter = actix::Arbiter::new();
        let (tx, rx) = std::sync::mpsc::channel();
        arbiter.spawn_fn(move || {
            tx.send(Sink.start()).unwrap();
        });
        let addr = rx.recv().unwrap();
        b.iter_custom(|iters| {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let start = Instant::now();
            for _ in 0..iters {
                addr.do_send(Ping);
                addr.do_send(Ping);
            }
            addr.do_send(Flush(done_tx));
            done_rx.recv().unwrap();
            start.elapsed()
        });
        arbiter.stop();
    });
    group.finish();
}

struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Ping;

impl Handler<Ping> for Sink {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Self::Context) {}
}

#[derive(Message)]
#[rtype(result = "()")]
struct Flush(std::sync::mpsc::Sender<()>);

impl Handler<Flush> for Sink {
    type Result = ();

    fn handle(&mut self, msg: Flush, _ctx: &mut Self::Context) {
        let _ = msg.0.send(());
    }
}

mod group {
    // criterion_group! makes an undocumented `pub fn`.
    #![allow(missing_docs)]
    use super::registry_pairs;
    use criterion::criterion_group;

    criterion_group!(benches, registry_pairs);
}

criterion_main!(group::benches);
