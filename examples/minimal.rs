//! A complete echo service with the whole lifecycle: descriptors from `Handoff`,
//! tracked connections, a graceful stop on SIGTERM/Ctrl-C (clients get `bye`; exit 0).
//!
//! `cargo run -p lifecycle-examples --example minimal [ADDR]` (default `127.0.0.1:7007`;
//! prints `listening on ADDR` once ready), then `nc 127.0.0.1 7007`. `Handoff::detect` also
//! takes the socket from systemd (`systemd-socket-activate -l 127.0.0.1:7007 --fdname=echo
//! target/debug/examples/minimal`) or an `ECHO_*` hand-off. As root it says `privileged` and
//! binds as immediate mode does, but this example starts no unprivileged child (the gateway
//! does), so it serves as root: fine to try, not for production.

use actix_lifecycle::{ConnHandler, Lifecycle};
use lifecycle_handoff::{Handoff, ListenerSpec};
use slog::{info, o, Drain};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Echoes lines until the client leaves or the service drains.
fn echo() -> ConnHandler {
    ConnHandler::new(|conn| async move {
        let shutdown = conn.shutdown().clone();
        let (reader, mut writer) = tokio::io::split(conn);
        let mut lines = BufReader::new(reader).lines();
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                () = shutdown.draining() => break,
            };
            let Ok(Some(line)) = line else { return };
            let reply = format!("{line}\n");
            if writer.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"bye: shutting down\n").await;
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:7007".into());
    let mut handoff = Handoff::detect("ECHO")?;
    handoff.prepare(&[ListenerSpec::tcp("echo", addr.parse()?)], &[])?;
    let drain = slog_term::FullFormat::new(slog_term::PlainSyncDecorator::new(std::io::stderr()));
    let log = slog::Logger::root(drain.build().fuse(), o!());
    info!(log, "descriptors ready"; "mode" => %handoff.mode(), "reason" => handoff.reason());
    let listening: String = (handoff.inventory().listeners.iter())
        .map(|l| format!("listening on {}\n", l.spec.address()))
        .collect();
    let inventory = handoff.into_inventory();

    let system = actix::System::new();
    system.block_on(async move {
        let lifecycle = Lifecycle::builder(inventory).logger(log).start()?;
        lifecycle.serve("echo", "echo", echo());
        print!("{listening}");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // The coordinator stops the System with 0 after a clean SIGTERM/SIGINT.
    std::process::exit(system.run_with_code()?)
}
