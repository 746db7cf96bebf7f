//! A two-listener line server, as an adopter writes one.
//!
//! `pingd NAME=ADDR... [--serve NAME]...`: binds each `NAME=ADDR` through
//! the hand-off, serves each `--serve NAME` (default: every bound one),
//! prints `listening NAME ADDR` per listener and `ready` once every one
//! serves, and exits 0 after SIGTERM. A line `PING` gets `PONG`; `SLOW`
//! gets `SLOW STARTED`, then `SLOW DONE` 200 ms later (a request in
//! flight); `METRICS` gets the connection gauges and `END`. Idle
//! connections get `BYE shutting down` as soon as the drain starts.

use std::process::ExitCode;
use std::time::Duration;

use actix_lifecycle::{ConnHandler, Handoff, Lifecycle, ListenerSpec, Mode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn handler(lifecycle: Lifecycle) -> ConnHandler {
    ConnHandler::new(move |conn| {
        let lifecycle = lifecycle.clone();
        async move {
            let shutdown = conn.shutdown().clone();
            let (reader, mut writer) = tokio::io::split(conn);
            let mut lines = BufReader::new(reader).lines();
            loop {
                let line = tokio::select! {
                    biased;
                    line = lines.next_line() => line,
                    () = shutdown.draining() => {
                        let _ = writer.write_all(b"BYE shutting down\n").await;
                        break;
                    }
                };
                let reply = match line.as_ref().map(|l| l.as_deref()) {
                    Ok(Some("PING")) => "PONG\n".to_owned(),
                    Ok(Some("SLOW")) => {
                        if writer.write_all(b"SLOW STARTED\n").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        "SLOW DONE\n".to_owned()
                    }
                    Ok(Some("METRICS")) => {
                        let text = lifecycle.metrics_text();
                        let gauges = text
                            .lines()
                            .filter(|l| l.starts_with("lifecycle_connections{"));
                        gauges.map(|l| format!("{l}\n")).collect::<String>() + "END\n"
                    }
                    Ok(Some(_)) => "ERR say PING\n".to_owned(),
                    _ => break,
                };
                if writer.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    })
}

fn run() -> Result<i32, Box<dyn std::error::Error>> {
    let mut specs = Vec::new();
    let mut serve = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--serve" {
            serve.push(args.next().ok_or("--serve needs a listener name")?);
        } else {
            let (name, addr) = arg.split_once('=').ok_or("want NAME=ADDR")?;
            specs.push(ListenerSpec::tcp(name, addr.parse()?));
        }
    }
    if serve.is_empty() {
        serve = specs.iter().map(|s| s.name().to_owned()).collect();
    }
    let mut handoff = Handoff::with_mode("PINGD", Mode::Immediate)?;
    handoff.prepare(&specs, &[])?;

    let system = actix::System::new();
    system.block_on(async move {
        let lifecycle = Lifecycle::from_handoff(handoff)
            .drain_grace(Duration::from_secs(5))
            .abort_grace(Duration::from_secs(1))
            .start()?;
        for name in serve {
            lifecycle.serve(name, "ping", handler(lifecycle.clone()));
        }
        let ready = lifecycle.ready().await?;
        for l in &ready.listeners {
            println!("listening {} {}", l.name, l.address);
        }
        println!("ready");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(system.run_with_code()?)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("pingd: {e}");
            ExitCode::from(1)
        }
    }
}
