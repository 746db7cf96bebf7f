//! Adding connection tracking and a graceful, bounded shutdown to an
//! existing actix-web app, keeping its `HttpServer`
//! (`Lifecycle::serve_actix_web`, cargo feature `actix-web`):
//!
//! - the socket comes from the lifecycle's broker (bound here through the
//!   hand-off, as a privileged parent or systemd would pass it), and
//!   `Lifecycle::ready` waits until it serves;
//! - every connection actix-web accepts is registered on the registry
//!   shard of the worker thread that serves it, until actix-web drops it;
//! - `/metrics` serves `Lifecycle::metrics_text`
//!   (`lifecycle_connections{protocol="http",listener="http"}` and friends);
//! - `/readyz` answers 503 once the shutdown begins: for a lame duck of
//!   [`READINESS_DELAY`] the server still serves, so load balancers stop
//!   sending traffic before it closes;
//! - actix-web's own signal handling is off: the lifecycle's coordinator
//!   takes SIGTERM/Ctrl-C; at `Draining` actix-web stops gracefully (stop
//!   accepting, close idle keep-alive connections, finish requests in
//!   flight). The coordinator's abort cannot cut a request in flight (the
//!   connections are not `Tracked` streams): actix-web's `shutdown_timeout`,
//!   set to the drain grace, drops what is left. The process then exits 0.
//!
//! `cargo run -p lifecycle-examples --example actix_web_embed [ADDR]`
//! (default `127.0.0.1:8080`; prints `listening on ADDR` once ready), then
//! `curl localhost:8080/`, `curl localhost:8080/metrics`, `curl localhost:8080/readyz`,
//! and Ctrl-C.

use std::io;
use std::time::Duration;

use actix_lifecycle::{Handoff, Lifecycle, ListenerSpec, Mode, ShutdownHandle};
use actix_web::{web, App, HttpResponse, HttpServer};
use slog::{o, Drain};

/// How long open requests may take once draining starts.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// How long `/readyz` says 503 while new connections are still served.
const READINESS_DELAY: Duration = Duration::from_secs(1);

// ---- The existing app, unchanged. ----

async fn hello() -> &'static str {
    "hello from an existing actix-web app\n"
}

fn existing_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(hello));
}

// ---- What the lifecycle adds. ----

async fn readyz(shutdown: web::Data<ShutdownHandle>) -> HttpResponse {
    if shutdown.is_shutting_down() {
        HttpResponse::ServiceUnavailable().body("shutting down\n")
    } else {
        HttpResponse::Ok().body("ready\n")
    }
}

async fn metrics(lifecycle: web::Data<Lifecycle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(lifecycle.metrics_text())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    // Bind here; a privileged parent or systemd would pass the socket instead.
    let mut handoff = Handoff::with_mode("WEB", Mode::Immediate)?;
    handoff.prepare(&[ListenerSpec::tcp("http", addr.parse()?)], &[])?;

    let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), o!());
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let lifecycle = Lifecycle::from_handoff(handoff)
            .logger(log)
            .lame_duck(READINESS_DELAY)
            .drain_grace(DRAIN_GRACE)
            .start()?;
        let (shutdown, app_lifecycle) = (lifecycle.shutdown_handle(), lifecycle.clone());
        let server = HttpServer::new(move || {
            App::new()
                .configure(existing_routes)
                .app_data(web::Data::new(shutdown.clone()))
                .app_data(web::Data::new(app_lifecycle.clone()))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(2);
        lifecycle.serve_actix_web("http", server).await?;
        // `Lifecycle::start` installed the SIGTERM/SIGINT handlers already.
        for l in lifecycle.ready().await?.listeners {
            println!("listening on {}", l.address);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // The coordinator stops the System with 0 after a clean SIGTERM/SIGINT.
    std::process::exit(system.run_with_code()?)
}
