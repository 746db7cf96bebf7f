//! Our side: actix-lifecycle's ListenerActor, ConnectionRegistry (with its
//! prometheus metrics) and guards, used only through their public API.

use crate::abort::IdleServer;
use crate::accept::{Running, LINE};
use crate::listen::loopback_listener;
use crate::memory::{open_fds, Counting};
use crate::{join, Res};
use actix_lifecycle::{
    ConnHandler, ConnKind, ConnectionRegistry, Done, Lifecycle, RegistryHandle, Shutdown,
};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The listener's name and protocol label in every scenario.
const NAME: &str = "bench";

/// A lifecycle (broker, registry with metrics, coordinator) serving one
/// loopback listener (backlog 1024), inside an actix `System` on its own
/// thread; connections are served on that thread or, with `workers`, on
/// worker arbiters (as actix-server serves on workers beside its accept
/// thread).
struct OursServer {
    addr: SocketAddr,
    /// Handles sent back from the System thread; held until [`stop`] so
    /// every actor lives as long as the server.
    lifecycle: Lifecycle,
    system: actix::System,
    workers: Vec<actix::Arbiter>,
    thread: JoinHandle<Res<()>>,
}

impl OursServer {
    fn start(handler: fn() -> ConnHandler, workers: usize) -> Res<Self> {
        Self::start_with(handler, workers, None)
    }

    fn start_with(
        handler: fn() -> ConnHandler,
        workers: usize,
        limits: Option<actix_lifecycle::Limits>,
    ) -> Res<Self> {
        let std_listener = loopback_listener()?;
        let addr = std_listener.local_addr()?;
        let inventory = Inventory {
            listeners: vec![PassedListener {
                spec: ListenerSpec::tcp(NAME, addr).with_backlog(crate::listen::BACKLOG as u32),
                fd: std_listener.into(),
            }],
            files: vec![],
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = crate::spawn_named("ours", move || -> Res<()> {
            let system = actix::System::new();
            let started = system.block_on(async move {
                let lifecycle = Lifecycle::builder(inventory)
                    .handle_signals(false)
                    .stop_system(false)
                    .metrics(&prometheus::Registry::new())
                    .start()
                    .map_err(|e| e.to_string())?;
                let arbiters: Vec<actix::Arbiter> =
                    (0..workers).map(|_| actix::Arbiter::new()).collect();
                let mut listener = lifecycle
                    .listener(NAME, NAME, handler())
                    .arbiters(arbiters.iter().map(|a| a.handle()).collect());
                if let Some(limits) = limits {
                    listener = listener.limits(limits);
                }
                listener.start();
                Ok::<_, String>((lifecycle, arbiters))
            });
            let ok = started.is_ok();
            let _ = ready_tx.send(started.map(|(l, a)| (l, a, actix::System::current())));
            if ok {
                system.run()?;
            }
            Ok(())
        })?;
        let (lifecycle, workers, system) = ready_rx
            .recv()
            .map_err(|_| "the lifecycle thread ended before starting")?
            .map_err(|e| format!("cannot start the lifecycle: {e}"))?;
        Ok(Self {
            addr,
            lifecycle,
            system,
            workers,
            thread,
        })
    }

    fn stop(self) -> Res<()> {
        drop(self.lifecycle);
        for worker in self.workers {
            worker.stop();
            worker
                .join()
                .map_err(|_| "a worker arbiter of ours panicked")?;
        }
        self.system.stop();
        join(self.thread)
    }
}

/// The accept-path handler: write the line, drop the connection (which
/// closes and unregisters it).
fn write_line() -> ConnHandler {
    ConnHandler::new(|mut conn| async move {
        let _ = conn.write_all(LINE).await;
    })
}

/// Accept path: ListenerActor + registry + metrics, accepting and serving
/// on one arbiter.
pub(crate) fn start_accept() -> Res<Running> {
    let server = OursServer::start(write_line, 0)?;
    Ok(Running::new(server.addr, move || server.stop()))
}

/// Accept path on one arbiter with every admission limit on (issue 14),
/// generous enough never to be hit: a per-listener cap, a per-address cap
/// (the load client is one address) and a rate.
pub(crate) fn start_accept_limited() -> Res<Running> {
    let server = OursServer::start_with(write_line, 0, Some(generous_limits()?))?;
    Ok(Running::new(server.addr, move || server.stop()))
}

/// Every admission limit on, generous enough never to be hit: a
/// per-listener cap, a per-address cap and a rate.
fn generous_limits() -> Res<actix_lifecycle::Limits> {
    let rate = actix_lifecycle::Rate::new(1_000_000_000, Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    Ok(actix_lifecycle::Limits::none()
        .max_connections(1_000_000)
        .max_per_address(1_000_000)
        .rate_per_address(rate))
}

/// Accept path as actix-server is built: accepting on one thread, serving
/// on one worker arbiter.
pub(crate) fn start_accept_worker() -> Res<Running> {
    let server = OursServer::start(write_line, 1)?;
    Ok(Running::new(server.addr, move || server.stop()))
}

/// Abort: the handler reads until end of stream; the abort is the
/// registry's `Shutdown` message, and it is over when `Done` resolves.
pub(crate) fn start_abort(n: usize) -> Res<IdleServer> {
    let server = OursServer::start(
        || {
            ConnHandler::new(|mut conn| async move {
                let mut buf = [0u8; 64];
                while let Ok(read) = conn.read(&mut buf).await {
                    if read == 0 {
                        break;
                    }
                }
            })
        },
        0,
    )?;
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (result_tx, result_rx) = mpsc::channel();
    let registry = server.lifecycle.registry().clone();
    let connections = server.lifecycle.connections().clone();
    // The measurement runs on the lifecycle's own arbiter.
    let spawned = server.system.arbiter().spawn(async move {
        while connections.live() < n as u64 {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = accepted_tx.send(());
        if go_rx.await.is_err() {
            return;
        }
        let start = Instant::now();
        let sent = registry.send(Shutdown).await;
        let done = registry.send(Done).await;
        if sent.is_ok() && done.is_ok() {
            let _ = result_tx.send(start.elapsed());
        }
    });
    if !spawned {
        return Err("the lifecycle's arbiter is gone".into());
    }
    let addr = server.addr;
    Ok(IdleServer::new(
        addr,
        accepted_rx,
        go_tx,
        result_rx,
        move || server.stop(),
    ))
}

/// A registry with its prometheus metrics (as the accept path has them),
/// outside any actor system, and the kind every scenario registers.
fn registry_with_metrics() -> Res<(RegistryHandle, ConnKind)> {
    let registry = ConnectionRegistry::builder()
        .metrics(&prometheus::Registry::new())
        .build()
        .map_err(|e| e.to_string())?;
    let handle = registry.handle();
    let kind = handle.kind("smtp", NAME);
    Ok((handle, kind))
}

/// Registry pairs: `threads` producers, each with its own shard (as each
/// arbiter has), registering and dropping `pairs` guards.
pub(crate) fn registry_pairs(threads: usize, pairs: u64) -> Res<Duration> {
    let (handle, kind) = registry_with_metrics()?;
    let producers = (0..threads)
        .map(|_| {
            let shard = handle.new_shard();
            let kind = kind.clone();
            move || -> Res<()> {
                for _ in 0..pairs {
                    drop(std::hint::black_box(shard.register(&kind)));
                }
                Ok(())
            }
        })
        .collect();
    let took = crate::registry::run_producers(producers)?;
    if handle.live() != 0 {
        return Err(format!("{} connections still live after the pairs", handle.live()).into());
    }
    Ok(took)
}

/// What one tracked connection costs.
pub(crate) struct GuardMemory {
    /// Live heap bytes per connection, all included.
    pub(crate) bytes: f64,
    /// Fds opened while registering all of them.
    pub(crate) extra_fds: f64,
    /// The allocation made once per connection (size in bytes), if one
    /// size was allocated at least once per connection.
    pub(crate) per_connection_alloc: Option<usize>,
    /// The guard's own size (held by the handler; here in a Vec).
    pub(crate) guard: usize,
}

/// Memory: live heap bytes per guard with `n` guards registered (the
/// guards themselves held in a Vec, counted), and the fds opened meanwhile.
pub(crate) fn memory_per_guard(counting: &Counting, n: usize) -> Res<GuardMemory> {
    let (handle, kind) = registry_with_metrics()?;
    let shard = handle.new_shard();
    // Warm up: the first registration creates per-kind state once.
    drop(shard.register(&kind));
    let fds_before = open_fds()?;
    counting.start();
    let guards: Vec<_> = (0..n).map(|_| shard.register(&kind)).collect();
    let bytes = counting.live();
    let (size, times) = counting.most_common_size();
    counting.stop();
    let fds_after = open_fds()?;
    if handle.live() != n as u64 {
        return Err(format!("{} live, expected {n}", handle.live()).into());
    }
    drop(guards);
    Ok(GuardMemory {
        bytes: bytes as f64 / n as f64,
        extra_fds: fds_after as f64 - fds_before as f64,
        per_connection_alloc: (times as usize >= n).then_some(size),
        guard: std::mem::size_of::<actix_lifecycle::ConnectionGuard>(),
    })
}

/// The admission check alone: `pairs` admit-and-drop pairs of connections
/// from one address (as the accept bench's load client is) on one shard,
/// with the accept bench's generous limits on (`limited`) or with none,
/// which is what every accepted connection goes through either way.
pub(crate) fn admission_pairs(limited: bool, pairs: u64) -> Res<Duration> {
    let (handle, kind) = registry_with_metrics()?;
    if limited {
        handle.set_limits(&kind, Some(generous_limits()?));
    }
    let shard = handle.new_shard();
    let peer = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let start = Instant::now();
    for _ in 0..pairs {
        let guard = shard
            .admit(&kind, std::hint::black_box(peer))
            .map_err(|reason| format!("admission refused: {}", reason.as_str()))?;
        drop(std::hint::black_box(guard));
    }
    let took = start.elapsed();
    if handle.live() != 0 {
        return Err(format!("{} connections still live after the pairs", handle.live()).into());
    }
    Ok(took)
}
