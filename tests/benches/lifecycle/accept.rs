//! Accept path: connections per second when the handler writes one line
//! and closes. Every server serves on one thread; the load client runs in
//! its own process.

use crate::client::LoadClient;
use crate::listen::loopback_listener;
use crate::stats::{Samples, Unit};
use crate::{join, rotate, Res};
use std::net::SocketAddr;
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
    let std_listener = loopback_listener()?;
    let addr = std_listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = crate::spawn_named("tokio", move || -> Res<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((mut stream, _peer)) = accepted else { continue };
                        tokio::spawn(async move {
                            let _ = stream.write_all(LINE).await;
                        });
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

/// Runs every contender `reps` times, interleaved, `n` connections each.
pub(crate) fn measure(
    client: &mut LoadClient,
    contenders: &[Contender],
    reps: usize,
    n: usize,
    concurrency: usize,
) -> Res<Vec<Samples>> {
    let mut samples = vec![Samples::new(Unit::PerSecond); contenders.len()];
    for rep in 0..reps {
        for i in rotate(contenders.len(), rep) {
            let c = &contenders[i];
            let server = (c.start)()?;
            let took = client
                .accept(server.addr, n, concurrency)
                .map_err(|e| format!("accept path, {}: {e}", c.name));
            server.stop()?;
            samples[i].push_rate(n as u64, took?);
        }
    }
    Ok(samples)
}
