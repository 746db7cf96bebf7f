//! The message-driven test harness: two independent echo services on
//! ephemeral ports in one actix System, driven only by messages.
//!
//! Run with `cargo run -p lifecycle-examples --example harness`.

use std::time::Duration;

use actix::Actor;
use actix_lifecycle::{
    BeginShutdown, ConnHandler, Done, GetPhase, Harness, Snapshot, Start, WaitStopped,
};
use slog::{info, o, Drain};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Echoes lines; says goodbye once the service drains.
fn echo_lines() -> ConnHandler {
    ConnHandler::new(|conn| async move {
        let shutdown = conn.shutdown().clone();
        let (reader, mut writer) = tokio::io::split(conn);
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if shutdown.is_draining() {
                let _ = writer.write_all(b"bye: shutting down\n").await;
                return;
            }
            if writer
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

fn main() -> std::io::Result<()> {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), o!());

    actix::System::new().block_on(async move {
        // Two instances, each with its own metrics registry.
        let first = Harness::builder()
            .logger(log.new(o!("instance" => "first")))
            .tcp("echo", "echo", echo_lines())
            .drain_grace(Duration::from_millis(500))
            .build()
            .start();
        let second = Harness::builder()
            .logger(log.new(o!("instance" => "second")))
            .tcp("echo", "echo", echo_lines())
            .build()
            .start();
        let (Ok(Ok(a)), Ok(Ok(b))) = (first.send(Start).await, second.send(Start).await) else {
            info!(log, "a harness failed to start");
            return;
        };
        let (Some(addr_a), Some(addr_b)) = (a.tcp("echo"), b.tcp("echo")) else {
            return;
        };
        info!(log, "started"; "first" => %addr_a, "second" => %addr_b);

        // A client on the first instance.
        let Ok(client) = tokio::net::TcpStream::connect(addr_a).await else {
            return;
        };
        let (reader, mut writer) = client.into_split();
        let mut replies = BufReader::new(reader).lines();
        let _ = writer.write_all(b"hello\n").await;
        info!(log, "echoed"; "reply" => ?replies.next_line().await.ok().flatten());

        if let (Ok(sa), Ok(sb)) = (first.send(Snapshot).await, second.send(Snapshot).await) {
            info!(log, "snapshots"; "first_live" => sa.live, "second_live" => sb.live);
        }

        // Shut the first one down; the client gets a goodbye on its next line.
        let _ = first.send(BeginShutdown).await;
        info!(log, "phase"; "first" => ?first.send(GetPhase).await.ok(),
            "second" => ?second.send(GetPhase).await.ok());
        let _ = writer.write_all(b"still there?\n").await;
        info!(log, "reply while draining"; "reply" => ?replies.next_line().await.ok().flatten());
        let _ = first.send(Done).await;
        if let Ok(outcome) = first.send(WaitStopped).await {
            info!(log, "first stopped"; "exit_code" => outcome.exit_code,
                "elapsed_ms" => outcome.elapsed.as_millis() as u64);
        }

        // The second instance is unaffected; stop it too.
        let _ = second.send(BeginShutdown).await;
        if let Ok(outcome) = second.send(WaitStopped).await {
            info!(log, "second stopped"; "exit_code" => outcome.exit_code);
        }
    });
    Ok(())
}
