//! Registry: register+unregister pairs per second, and the floors it is
//! held against: mox's design (`Mutex<HashMap>`) and an empty actix
//! `do_send` pair, on the producer's own thread and across threads.

use crate::stats::{Samples, Unit};
use crate::{rotate, Res};
use actix::prelude::*;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Pairs a same-thread producer sends before it yields to the actor.
pub(crate) const BATCH: u64 = 256;
/// How far a cross-thread producer may run ahead of its consumer, in
/// messages: bounds the queue (and memory) without a round trip per pair.
const WINDOW: u64 = 8192;

/// What mox keeps per connection, as the `Mutex<HashMap>` baseline holds it.
#[derive(Debug)]
#[allow(dead_code)] // held to cost what a real entry costs; never read back
struct Entry {
    protocol: &'static str,
    listener: &'static str,
    since: Instant,
}

/// Runs one producer per closure on its own thread, started together
/// (barrier); the time is from the first producer's start to the last
/// one's end, taken by the producers themselves (the spawning thread may
/// be descheduled past the barrier).
pub(crate) fn run_producers<F>(producers: Vec<F>) -> Res<Duration>
where
    F: FnOnce() -> Res<()> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(producers.len()));
    let workers: Vec<_> = producers
        .into_iter()
        .map(|work| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                work().map(|()| (start, Instant::now()))
            })
        })
        .collect();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    for w in workers {
        let (start, end) = w.join().map_err(|_| "producer panicked")??;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    match (first, last) {
        (Some(first), Some(last)) => Ok(last - first),
        _ => Err("no producers".into()),
    }
}

/// `threads` producers, each inserting and removing `pairs` entries of one
/// shared `Mutex<HashMap>` (mox's `Connections`). Returns the wall time.
pub(crate) fn mutex_hashmap(threads: usize, pairs: u64) -> Res<Duration> {
    let map: Arc<Mutex<HashMap<u64, Entry>>> = Arc::default();
    let producers = (0..threads)
        .map(|t| {
            let map = Arc::clone(&map);
            move || -> Res<()> {
                let base = (t as u64) << 40;
                for i in 0..pairs {
                    let id = base | i;
                    let entry = Entry {
                        protocol: "smtp",
                        listener: "smtp",
                        since: Instant::now(),
                    };
                    map.lock().map_err(|_| "poisoned")?.insert(id, entry);
                    std::hint::black_box(map.lock().map_err(|_| "poisoned")?.remove(&id));
                }
                Ok(())
            }
        })
        .collect();
    run_producers(producers)
}

#[derive(Message)]
#[rtype(result = "()")]
struct Register(#[allow(dead_code)] u64);

#[derive(Message)]
#[rtype(result = "()")]
struct Unregister(#[allow(dead_code)] u64);

/// An actor whose handlers only count, on its producer's thread.
struct LocalCounter {
    seen: Rc<Cell<u64>>,
}

impl Actor for LocalCounter {
    type Context = Context<Self>;
}

impl Handler<Register> for LocalCounter {
    type Result = ();
    fn handle(&mut self, _: Register, _: &mut Context<Self>) {
        self.seen.set(self.seen.get() + 1);
    }
}

impl Handler<Unregister> for LocalCounter {
    type Result = ();
    fn handle(&mut self, _: Unregister, _: &mut Context<Self>) {
        self.seen.set(self.seen.get() + 1);
    }
}

/// Empty `do_send` pairs to an actor on the producer's own arbiter: the
/// producer yields every [`BATCH`] pairs so the actor can drain its
/// mailbox. Returns the time until the actor has handled every message.
pub(crate) fn do_send_same_thread(pairs: u64) -> Res<Duration> {
    let took = actix::System::new().block_on(async move {
        let seen = Rc::new(Cell::new(0u64));
        let addr = LocalCounter {
            seen: Rc::clone(&seen),
        }
        .start();
        let start = Instant::now();
        for i in 0..pairs {
            addr.do_send(Register(i));
            addr.do_send(Unregister(i));
            if i % BATCH == BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        while seen.get() < 2 * pairs {
            tokio::task::yield_now().await;
        }
        start.elapsed()
    });
    Ok(took)
}

/// An actor whose handlers only count, on another thread than its producer.
struct SharedCounter {
    seen: Arc<AtomicU64>,
}

impl Actor for SharedCounter {
    type Context = Context<Self>;
}

impl Handler<Register> for SharedCounter {
    type Result = ();
    fn handle(&mut self, _: Register, _: &mut Context<Self>) {
        self.seen.fetch_add(1, Ordering::Release);
    }
}

impl Handler<Unregister> for SharedCounter {
    type Result = ();
    fn handle(&mut self, _: Unregister, _: &mut Context<Self>) {
        self.seen.fetch_add(1, Ordering::Release);
    }
}

/// Empty `do_send` pairs from a plain thread to an actor on an arbiter
/// thread; the producer stays at most [`WINDOW`] messages ahead. Returns
/// the time until the actor has handled every message.
pub(crate) fn do_send_cross_thread(pairs: u64) -> Res<Duration> {
    let system = actix::System::new();
    let arbiter = system.block_on(async { actix::Arbiter::new() });
    let seen = Arc::new(AtomicU64::new(0));
    let counter_seen = Arc::clone(&seen);
    let addr = SharedCounter::start_in_arbiter(&arbiter.handle(), move |_| SharedCounter {
        seen: counter_seen,
    });
    let start = Instant::now();
    for i in 0..pairs {
        addr.do_send(Register(i));
        addr.do_send(Unregister(i));
        if i % BATCH == BATCH - 1 {
            let sent = 2 * (i + 1);
            while seen.load(Ordering::Acquire) + WINDOW < sent {
                std::thread::yield_now();
            }
        }
    }
    while seen.load(Ordering::Acquire) < 2 * pairs {
        std::thread::yield_now();
    }
    let took = start.elapsed();
    arbiter.stop();
    let _ = arbiter.join();
    Ok(took)
}

/// One registry contender: runs `pairs` per producer and returns the time.
pub(crate) struct Contender {
    pub(crate) name: &'static str,
    /// Producer threads, to turn time into total pairs/s.
    pub(crate) threads: u64,
    pub(crate) run: Box<dyn Fn(u64) -> Res<Duration>>,
}

/// Runs every contender `reps` times, interleaved.
pub(crate) fn measure(contenders: &[Contender], reps: usize, pairs: u64) -> Res<Vec<Samples>> {
    let mut samples = vec![Samples::new(Unit::PerSecond); contenders.len()];
    for rep in 0..reps {
        for i in rotate(contenders.len(), rep) {
            let c = &contenders[i];
            let took = (c.run)(pairs).map_err(|e| format!("registry, {}: {e}", c.name))?;
            samples[i].push_rate(pairs * c.threads, took);
        }
    }
    Ok(samples)
}
