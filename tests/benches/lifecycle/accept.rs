//! Accept path: connections per second when the handler writes one line
//! and closes. Every server serves on one thread; the load client runs in
//! its own process.

use crate::client::LoadClient;
use crate::listen::loopback_listener;
use crate::stats::{Measured, Unit};
use crate::{join, Res};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The line every accept-path handler writes before closing.
pub(crate) const LINE: &[u8] = b"hello from the accept bench\r\n";

/// A server under test, running on its own thread until stopped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: Box<dyn FnOnce() -> Res<()>>,
}

impl Running {
    pub(crate) fn new(addr: SocketAddr, stop: impl FnOnce() -> Res<()> + 'static) -> Self {
        Self {
            addr,
            stop: Box::new(stop),
        }
    }

    pub(crate) fn stop(self) -> Res<()> {
        (self.stop)()
    }
}

/// A plain tokio accept loop on a current-thread runtime: one task per
/// connection that writes the line and drops the stream.
pub(crate) fn start_tokio() -> Res<Running> {
    serve_tokio("tokio", |mut stream| async move {
        let _ = stream.write_all(LINE).await;
    })
}

/// Serves a loopback listener on a current-thread tokio runtime on a
/// thread of its own (named `name`), one task per connection running
/// `handler`, until stopped.
pub(crate) fn serve_tokio<F, Fut>(name: &str, handler: F) -> Res<Running>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let std_listener = loopback_listener()?;
    let addr = std_listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = crate::spawn_named(name, move || -> Res<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _peer)) = accepted else { continue };
                        tokio::spawn(handler(stream));
                    }
                }
            }
            Ok::<_, std::io::Error>(())
        })?;
        Ok(())
    })?;
    Ok(Running::new(addr, move || {
        let _ = stop_tx.send(());
        join(thread)
    }))
}

/// actix-server with one worker and the same handler.
pub(crate) fn start_actix_server() -> Res<Running> {
    let std_listener = loopback_listener()?;
    let addr = std_listener.local_addr()?;
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = crate::spawn_named("actix-server", move || -> Res<()> {
        actix_rt::System::new().block_on(async move {
            let server = actix_server::Server::build()
                .workers(1)
                .disable_signals()
                .listen("bench", std_listener, || {
                    actix_service::fn_service(|mut stream: actix_rt::net::TcpStream| async move {
                        stream.write_all(LINE).await
                    })
                })?
                .run();
            let _ = handle_tx.send(server.handle());
            server.await
        })?;
        Ok(())
    })?;
    let handle = handle_rx.recv().map_err(|_| "actix-server did not start")?;
    Ok(Running::new(addr, move || {
        // The stop command is queued at once; the returned future only
        // waits for completion, which joining the thread does too.
        drop(handle.stop(false));
        join(thread)
    }))
}

/// One accept-path contender.
pub(crate) struct Contender {
    pub(crate) name: &'static str,
    pub(crate) start: fn() -> Res<Running>,
}

/// Runs every contender `reps` times, interleaved, `n` connections each:
/// connections per second (the client's wall time) and the server
/// process's CPU time per connection (µs).
///
/// While the load client works, this process runs nothing but the server
/// under test (its main thread waits on the client's pipe), so the
/// process's CPU time over that span is the server's cost: a figure that a
/// busy machine disturbs far less than the wall-clock rate.
pub(crate) fn measure(
    client: &mut LoadClient,
    contenders: &[Contender],
    reps: usize,
    n: usize,
    concurrency: usize,
) -> Res<Measured> {
    let units = (Unit::PerSecond, Unit::Micros);
    Measured::interleaved(contenders.len(), reps, units, |i| {
        let c = &contenders[i];
        let server = (c.start)()?;
        let cpu_before = process_cpu()?;
        let took = client
            .accept(server.addr, n, concurrency)
            .map_err(|e| format!("accept path, {}: {e}", c.name));
        let cpu_used = process_cpu()? - cpu_before;
        server.stop()?;
        let rate = n as f64 / took?.as_secs_f64().max(1e-9);
        Ok((rate, cpu_used.as_secs_f64() * 1e6 / n as f64))
    })
}

/// User + system CPU time of this process so far.
pub(crate) fn process_cpu() -> Res<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}
