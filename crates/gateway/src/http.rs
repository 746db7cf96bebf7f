//! HTTP for operators, served by actix-web on listeners handed over as std
//! sockets: `/metrics` (Prometheus text format of the injected registry),
//! `/healthz` (200 while the process runs) and `/readyz` (200 once every
//! listener accepts and until draining starts, 503 otherwise).

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::ShutdownHandle;
use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};

/// Whether the service's listeners accept: set by whoever starts them.
/// Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the service ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// True once marked ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    registry: Registry,
    shutdown: ShutdownHandle,
    readiness: Readiness,
}

impl HttpState {
    /// State over the injected registry, shutdown phase and readiness.
    pub fn new(registry: Registry, shutdown: ShutdownHandle, readiness: Readiness) -> Self {
        HttpState {
            registry,
            shutdown,
            readiness,
        }
    }
}

/// A listening socket for the HTTP server.
#[derive(Debug)]
pub enum HttpListener {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// Unix-domain stream socket.
    Unix(UnixListener),
}

/// Builds (but does not start) the HTTP server on `listeners`. It runs one
/// worker, installs no signal handlers (the shutdown coordinator owns
/// signals), and gives open requests `shutdown_timeout` when stopped.
/// Must be called inside an actix system; spawn or await the returned
/// [`Server`], and stop it through its handle.
pub fn http_server(
    state: HttpState,
    listeners: Vec<HttpListener>,
    shutdown_timeout: Duration,
) -> io::Result<Server> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs().max(1));
    for listener in listeners {
        server = match listener {
            HttpListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                server.listen(l)?
            }
            HttpListener::Unix(l) => {
                l.set_nonblocking(true)?;
                server.listen_uds(l)?
            }
        };
    }
    Ok(server.run())
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => HttpResponse::Ok()
            .content_type(encoder.format_type())
            .body(body),
        Err(e) => HttpResponse::InternalServerError().body(format!("cannot encode metrics: {e}\n")),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    // From the lame duck on: a load balancer's health check sees the stop
    // at once, while every listener still serves normally.
    if state.shutdown.is_shutting_down() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("{}\n", state.shutdown.phase()))
    } else if !state.readiness.is_ready() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("starting\n")
    } else {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_lifecycle::{Phase, PhaseController};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        path: &str,
    ) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[actix_rt::test]
    async fn health_readiness_and_metrics_over_tcp_and_unix() {
        let registry = Registry::new();
        let gauge = prometheus::IntGauge::new("lifecycle_test_gauge", "A test gauge.").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        gauge.set(7);
        let phases = PhaseController::new();
        let readiness = Readiness::new();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("http.sock");
        let unix = UnixListener::bind(&sock).unwrap();
        let state = HttpState::new(registry, phases.handle(), readiness.clone());
        let server = http_server(
            state,
            vec![HttpListener::Tcp(tcp), HttpListener::Unix(unix)],
            Duration::from_secs(1),
        )
        .unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);

        let tcp = || async { tokio::net::TcpStream::connect(addr).await.unwrap() };
        assert_eq!(get(tcp().await, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(tcp().await, "/readyz").await,
            (503, "starting\n".into())
        );
        readiness.set_ready(true);
        assert_eq!(get(tcp().await, "/readyz").await, (200, "ready\n".into()));
        let (status, body) = get(tcp().await, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE lifecycle_test_gauge gauge\nlifecycle_test_gauge 7\n"),
            "{body}"
        );
        let unix = tokio::net::UnixStream::connect(&sock).await.unwrap();
        assert_eq!(get(unix, "/healthz").await.0, 200);

        phases.advance(Phase::LameDuck);
        assert_eq!(
            get(tcp().await, "/readyz").await,
            (503, "lame_duck\n".into())
        );
        phases.advance(Phase::Draining);
        assert_eq!(
            get(tcp().await, "/readyz").await,
            (503, "draining\n".into())
        );
        assert_eq!(get(tcp().await, "/healthz").await.0, 200);
        assert_eq!(get(tcp().await, "/nope").await.0, 404);
        handle.stop(true).await;
    }
}
