//! Abort: N idle connections, from the order to abort until every
//! connection's task has ended. The clients are held by the load client
//! process; the server side lives here.

use crate::accept::process_cpu;
use crate::client::LoadClient;
use crate::listen::loopback_listener;
use crate::stats::{Measured, Unit};
use crate::{join, Res};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// A server holding idle connections, ready to abort them on request.
pub(crate) struct IdleServer {
    pub(crate) addr: SocketAddr,
    /// Fires once the server has accepted all `n` connections.
    accepted: mpsc::Receiver<()>,
    go: Option<tokio::sync::oneshot::Sender<()>>,
    /// Carries the measured abort time.
    result: mpsc::Receiver<Duration>,
    /// Stops the server and joins its thread.
    finish: Box<dyn FnOnce() -> Res<()>>,
}

impl IdleServer {
    pub(crate) fn new(
        addr: SocketAddr,
        accepted: mpsc::Receiver<()>,
        go: tokio::sync::oneshot::Sender<()>,
        result: mpsc::Receiver<Duration>,
        finish: impl FnOnce() -> Res<()> + 'static,
    ) -> Self {
        Self {
            addr,
            accepted,
            go: Some(go),
            result,
            finish: Box::new(finish),
        }
    }

    /// Orders the abort once every connection is accepted; returns the
    /// server's measured time and this process's CPU time over the span
    /// (only the server works meanwhile).
    fn abort_and_time(&mut self) -> Res<(Duration, Duration)> {
        self.accepted
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the server did not accept every connection within 60 s")?;
        let cpu_before = process_cpu()?;
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
        let took = self
            .result
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the server did not finish aborting within 60 s")?;
        Ok((took, process_cpu()? - cpu_before))
    }

    fn finish(self) -> Res<()> {
        (self.finish)()
    }
}

/// The baseline: a current-thread tokio runtime, one task per connection
/// waiting to read; abort is a loop calling shutdown(2) on every socket,
/// then waiting for all the tasks to end (each closes its socket).
pub(crate) fn start_shutdown_loop(n: usize) -> Res<IdleServer> {
    let std_listener = loopback_listener()?;
    let addr = std_listener.local_addr()?;
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let (result_tx, result_rx) = mpsc::channel();
    let thread = crate::spawn_named("abort-baseline", move || -> Res<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            let mut sockets = Vec::with_capacity(n);
            let mut tasks = JoinSet::new();
            while sockets.len() < n {
                let (stream, _) = listener.accept().await?;
                let stream = Arc::new(stream);
                sockets.push(Arc::clone(&stream));
                tasks.spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        if stream.readable().await.is_err() {
                            break;
                        }
                        match stream.try_read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(_) => break,
                        }
                    }
                });
            }
            let _ = accepted_tx.send(());
            let _ = go_rx.await;
            let start = Instant::now();
            for socket in &sockets {
                let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Both);
            }
            // As in ours, each socket closes when its task ends, inside
            // the measured time.
            drop(sockets);
            while let Some(done) = tasks.join_next().await {
                done?;
            }
            let _ = result_tx.send(start.elapsed());
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })?;
        Ok(())
    })?;
    Ok(IdleServer::new(
        addr,
        accepted_rx,
        go_tx,
        result_rx,
        move || join(thread),
    ))
}

/// One abort contender: starts a server that will hold `n` connections.
pub(crate) struct Contender {
    pub(crate) name: &'static str,
    pub(crate) start: fn(usize) -> Res<IdleServer>,
}

/// Runs every contender `reps` times, interleaved, with `n` connections:
/// the abort's wall time and the server process's CPU time over it (ms).
pub(crate) fn measure(
    client: &mut LoadClient,
    contenders: &[Contender],
    reps: usize,
    n: usize,
) -> Res<Measured> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Measured::interleaved(contenders.len(), reps, (Unit::Millis, Unit::Millis), |i| {
        let c = &contenders[i];
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| format!("abort, {}: {e}", c.name);
        let mut server = (c.start)(n)?;
        client.hold(server.addr, n).map_err(fail)?;
        let (took, cpu_used) = server.abort_and_time().map_err(fail)?;
        client.wait_closed().map_err(fail)?;
        server.finish()?;
        Ok((ms(took), ms(cpu_used)))
    })
}
