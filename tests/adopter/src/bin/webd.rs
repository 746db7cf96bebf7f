//! An actix-web app tracked by the lifecycle, as an adopter writes one.
//!
//! `webd ADDR`: prints `listening ADDR` once it serves and exits 0 after
//! SIGTERM. `/` says hello; `/slow` answers only once the drain started
//! (a request in flight through the shutdown); `/metrics` is
//! `Lifecycle::metrics_text` plus `slow_in_flight N`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::{Handoff, Lifecycle, ListenerSpec, Mode};
use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(Clone)]
struct State {
    lifecycle: Lifecycle,
    slow: Arc<AtomicUsize>,
}

async fn hello() -> &'static str {
    "hello\n"
}

async fn slow(state: web::Data<State>) -> &'static str {
    state.slow.fetch_add(1, Ordering::SeqCst);
    state.lifecycle.shutdown_handle().draining().await;
    state.slow.fetch_sub(1, Ordering::SeqCst);
    "finished after the drain began\n"
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    let text = state.lifecycle.metrics_text();
    let slow = state.slow.load(Ordering::SeqCst);
    HttpResponse::Ok().body(format!("{text}slow_in_flight {slow}\n"))
}

fn run() -> Result<i32, Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).ok_or("usage: webd ADDR")?;
    let mut handoff = Handoff::with_mode("WEBD", Mode::Immediate)?;
    handoff.prepare(&[ListenerSpec::tcp("web", addr.parse()?)], &[])?;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let lifecycle = Lifecycle::from_handoff(handoff)
            .drain_grace(Duration::from_secs(5))
            .start()?;
        let state = State {
            lifecycle: lifecycle.clone(),
            slow: Arc::default(),
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .route("/", web::get().to(hello))
                .route("/slow", web::get().to(slow))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(2);
        lifecycle.serve_actix_web("web", server).await?;
        for l in lifecycle.ready().await?.listeners {
            println!("listening {}", l.address);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(system.run_with_code()?)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("webd: {e}");
            ExitCode::from(1)
        }
    }
}
