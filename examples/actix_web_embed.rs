//! Adding connection tracking and a graceful, bounded shutdown to an
//! existing actix-web app, keeping its `HttpServer`:
//!
//! - every connection actix-web accepts is registered with the lifecycle's
//!   `ConnectionRegistry` in `on_connect`; the guard sits in the
//!   connection's extensions, so it unregisters when actix-web drops the
//!   connection;
//! - `/metrics` serves the lifecycle's prometheus registry
//!   (`lifecycle_connections{protocol="http",listener="http"}` and friends);
//! - `/readyz` answers 503 once the service drains;
//! - actix-web's own signal handling is off: the lifecycle's coordinator
//!   takes SIGTERM/Ctrl-C, flips readiness, and after [`READINESS_DELAY`]
//!   asks actix-web to stop gracefully (stop accepting, finish requests in
//!   flight, close idle keep-alive connections). The coordinator's abort
//!   cannot cut these connections (they are not `Tracked` streams), so
//!   actix-web's `shutdown_timeout` drops what is left when the drain grace
//!   ends; the process then exits 0. A service with no open connection
//!   stops at once (there is nobody to tell it is unready).
//!
//! `cargo run -p lifecycle-examples --example actix_web_embed [ADDR]`
//! (default `127.0.0.1:8080`; prints `listening on ADDR` once ready), then
//! `curl localhost:8080/`, `curl localhost:8080/metrics`, `curl localhost:8080/readyz`,
//! and Ctrl-C. Here actix-web binds its own socket; to take it from a
//! privileged parent or systemd instead, pass
//! `TcpListener::from(handoff.listen(&spec)?)` to `HttpServer::listen`.

use std::any::Any;
use std::io;
use std::time::Duration;

use actix_lifecycle::{ConnKind, Lifecycle, RegistryShard, ShutdownHandle};
use actix_web::dev::Extensions;
use actix_web::{web, App, HttpResponse, HttpServer};
use lifecycle_handoff::Inventory;
use prometheus::{Encoder, TextEncoder};
use slog::{info, o, Drain};

/// How long open requests may take once draining starts.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// How long `/readyz` says 503 while new connections are still served, so
/// load balancers stop sending traffic before the listener closes.
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
    if shutdown.is_draining() {
        HttpResponse::ServiceUnavailable().body("draining\n")
    } else {
        HttpResponse::Ok().body("ready\n")
    }
}

async fn metrics(registry: web::Data<prometheus::Registry>) -> HttpResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => HttpResponse::Ok()
            .content_type(encoder.format_type())
            .body(body),
        Err(e) => HttpResponse::InternalServerError().body(format!("cannot encode metrics: {e}\n")),
    }
}

/// The `on_connect` callback: registers each connection; actix-web drops
/// the extensions (and so the guard) when the connection closes. One shard
/// serves every worker thread: correct, and uncontended enough for a few
/// workers (see `RegistryShard`).
fn track(shard: RegistryShard, kind: ConnKind) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync {
    move |_io, extensions| {
        extensions.insert(shard.register(&kind));
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), o!());

    let system = actix_web::rt::System::new();
    system.block_on(async move {
        // No listeners of its own: actix-web binds. Signals go to the coordinator.
        let lifecycle = Lifecycle::builder(Inventory::default())
            .logger(log.clone())
            .drain_grace(DRAIN_GRACE)
            .start()
            .map_err(io::Error::other)?;
        let connections = lifecycle.connections();
        let on_connect = track(connections.new_shard(), connections.kind("http", "http"));
        let (shutdown, registry) = (lifecycle.shutdown_handle(), lifecycle.metrics().clone());

        let app_shutdown = shutdown.clone();
        let server = HttpServer::new(move || {
            App::new()
                .configure(existing_routes)
                .app_data(web::Data::new(app_shutdown.clone()))
                .app_data(web::Data::new(registry.clone()))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(2)
        .on_connect(on_connect)
        .disable_signals()
        .shutdown_timeout(DRAIN_GRACE.saturating_sub(READINESS_DELAY).as_secs())
        .bind(&addr)?;
        let addrs = server.addrs();
        let server = server.run();
        let server_handle = server.handle();
        actix_web::rt::spawn(server);

        // Tie actix-web's graceful stop to the lifecycle's phases.
        actix_web::rt::spawn(async move {
            shutdown.draining().await;
            actix_web::rt::time::sleep(READINESS_DELAY).await;
            info!(
                log,
                "actix-web: stop accepting, finish requests, close idle connections"
            );
            server_handle.stop(true).await;
        });
        // `Lifecycle::start` installed the SIGTERM/SIGINT handlers already.
        for addr in addrs {
            println!("listening on {addr}");
        }
        Ok::<_, io::Error>(())
    })?;
    // The coordinator stops the System with 0 after a clean SIGTERM/SIGINT.
    std::process::exit(system.run_with_code()?)
}
