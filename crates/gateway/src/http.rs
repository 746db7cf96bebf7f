//! HTTP for operators, served by actix-web on listeners handed over as std
//! sockets: `/metrics` (Prometheus text format of the injected registry),
//! `/healthz` (200 while the process runs) and `/readyz` (200 once every
//! listener accepts and until draining starts, 503 otherwise).
//!
//! Connections are admitted under the listener's limits (issue 14) but not
//! tracked: a keep-alive scraper must not hold the drain, and `/readyz`
//! answers through it. A refused connection's requests are answered `503`
//! with `Retry-After` and the connection is closed.

use std::any::Any;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::{ConnKind, RegistryHandle, ShutdownHandle};
use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};

/// What a refused HTTP connection's client is told to wait, in seconds.
pub const BUSY_RETRY_AFTER_SECS: u32 = 5;

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

/// Where the HTTP server admits its connections: the registry, and the
/// kind (`http`, listener name) of each listener, matched by the address a
/// connection arrived on.
#[derive(Clone)]
pub struct HttpAdmission {
    registry: RegistryHandle,
    kinds: Arc<Vec<(Local, ConnKind)>>,
}

impl std::fmt::Debug for HttpAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAdmission")
            .field("listeners", &self.kinds.len())
            .finish()
    }
}

/// The address a listener is bound to.
#[derive(Debug, Clone, PartialEq)]
enum Local {
    Tcp(SocketAddr),
    Unix(Option<PathBuf>),
}

/// The mark of a refused connection, in its connection data.
#[derive(Debug, Clone, Copy)]
struct Busy;

impl HttpAdmission {
    /// Admission on `registry`; add each listener with [`listener`](Self::listener).
    pub fn new(registry: RegistryHandle) -> Self {
        HttpAdmission {
            registry,
            kinds: Arc::new(Vec::new()),
        }
    }

    /// Admits the connections of `listener` as `kind` (get it from
    /// [`RegistryHandle::kind`] with protocol `http`; its limits are the
    /// registry's for that kind).
    pub fn listener(mut self, listener: &HttpListener, kind: ConnKind) -> io::Result<Self> {
        let local = match listener {
            HttpListener::Tcp(l) => Local::Tcp(l.local_addr()?),
            HttpListener::Unix(l) => Local::Unix(l.local_addr()?.as_pathname().map(PathBuf::from)),
        };
        Arc::make_mut(&mut self.kinds).push((local, kind));
        Ok(self)
    }

    /// The kind of the listener a connection arrived on: the listener
    /// bound to its local address, or to the unspecified address of its
    /// port.
    fn kind_of(&self, local: &Local) -> Option<&ConnKind> {
        // IPv6 listeners are IPV6_V6ONLY: `[::]` and `0.0.0.0` on one port
        // are two listeners, told apart by the family.
        let bound_to = |l: &Local| match (l, local) {
            (Local::Tcp(bound), Local::Tcp(addr)) => {
                bound.port() == addr.port()
                    && bound.ip().is_unspecified()
                    && bound.is_ipv4() == addr.is_ipv4()
            }
            _ => false,
        };
        let exact = self.kinds.iter().find(|(l, _)| l == local);
        exact
            .or_else(|| self.kinds.iter().find(|(l, _)| bound_to(l)))
            .map(|(_, kind)| kind)
    }

    /// actix-web's `on_connect`: admits the connection (its place is held
    /// in the connection data until it closes) or marks it busy.
    fn on_connect(&self, io: &dyn Any, data: &mut Extensions) {
        let (local, peer) = if let Some(s) = io.downcast_ref::<actix_rt::net::TcpStream>() {
            match s.local_addr() {
                Ok(local) => (Local::Tcp(local), s.peer_addr().ok().map(|p| p.ip())),
                Err(_) => return,
            }
        } else if let Some(s) = io.downcast_ref::<actix_rt::net::UnixStream>() {
            let local = s.local_addr().ok();
            let path = local
                .as_ref()
                .and_then(|a| a.as_pathname())
                .map(PathBuf::from);
            (Local::Unix(path), None::<IpAddr>)
        } else {
            return;
        };
        let Some(kind) = self.kind_of(&local) else {
            return;
        };
        match self
            .registry
            .current_thread_shard()
            .admit_untracked(kind, peer)
        {
            Ok(admission) => {
                data.insert(admission);
            }
            // Counted by the registry (`refused_total{reason}`).
            Err(_) => {
                data.insert(Busy);
            }
        }
    }
}

/// The busy reply of a refused connection: `503`, `Retry-After`, and the
/// connection closed after it. Any other request passes.
async fn answer_busy(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.conn_data::<Busy>().is_some() {
        let response = HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", BUSY_RETRY_AFTER_SECS.to_string()))
            .content_type("text/plain")
            .force_close()
            .body("too many connections, try again later\n");
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Builds (but does not start) the HTTP server on `listeners`. It runs one
/// worker, installs no signal handlers (the shutdown coordinator owns
/// signals), and gives open requests `shutdown_timeout` when stopped.
/// With `admission`, each connection is admitted under its listener's
/// limits and a refused one is answered `503` with `Retry-After`.
/// Must be called inside an actix system; spawn or await the returned
/// [`Server`], and stop it through its handle.
pub fn http_server(
    state: HttpState,
    listeners: Vec<HttpListener>,
    admission: Option<HttpAdmission>,
    shutdown_timeout: Duration,
) -> io::Result<Server> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap(actix_web::middleware::from_fn(answer_busy))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs().max(1));
    if let Some(admission) = admission {
        server = server.on_connect(move |io, data| admission.on_connect(io, data));
    }
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
            None,
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

    #[actix_rt::test]
    async fn a_connection_over_the_limits_is_answered_503_with_retry_after() {
        let phases = PhaseController::new();
        let readiness = Readiness::new();
        let state = HttpState::new(Registry::new(), phases.handle(), readiness);
        let registry = actix_lifecycle::ConnectionRegistry::builder()
            .build()
            .unwrap()
            .handle();
        let kind = registry.kind("http", "ops");
        registry.set_limits(
            &kind,
            Some(actix_lifecycle::Limits::none().max_connections(1)),
        );
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = HttpListener::Tcp(tcp);
        let admission = HttpAdmission::new(registry.clone())
            .listener(&listener, kind.clone())
            .unwrap();
        let server = http_server(
            state,
            vec![listener],
            Some(admission),
            Duration::from_secs(1),
        )
        .unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);

        // The first connection stays open (keep-alive) and holds the one
        // place.
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = first.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );

        // The second is refused: 503, Retry-After, closed after it.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), second.read_to_string(&mut reply))
            .await
            .expect("the refused connection is closed after its reply")
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("retry-after: 5\r\n"),
            "{reply}"
        );
        assert!(
            reply.ends_with("too many connections, try again later\n"),
            "{reply}"
        );
        let refused = registry.snapshot().kind("http", "ops").unwrap().refused;
        assert_eq!(refused.listener_full, 1);
        assert_eq!(registry.live(), 0, "HTTP connections are not tracked");

        // The first one leaves: its place is free again.
        drop(first);
        let mut served = None;
        for _ in 0..100 {
            let third = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (status, _) = get(third, "/healthz").await;
            if status == 200 {
                served = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(served, Some(200), "the place was given back");
        handle.stop(true).await;
    }

    #[actix_rt::test]
    async fn a_connection_finds_its_listener_by_its_local_address() {
        let registry = actix_lifecycle::ConnectionRegistry::builder()
            .build()
            .unwrap()
            .handle();
        let (a, b) = (registry.kind("http", "a"), registry.kind("http", "b"));
        let any = HttpListener::Tcp(std::net::TcpListener::bind("0.0.0.0:0").unwrap());
        let lo = HttpListener::Tcp(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let port = |l: &HttpListener| match l {
            HttpListener::Tcp(l) => l.local_addr().unwrap().port(),
            HttpListener::Unix(_) => unreachable!(),
        };
        let (any_port, lo_port) = (port(&any), port(&lo));
        let admission = HttpAdmission::new(registry)
            .listener(&any, a)
            .unwrap()
            .listener(&lo, b)
            .unwrap();
        let at = |ip: &str, port| Local::Tcp(SocketAddr::new(ip.parse().unwrap(), port));
        let name = |l: Option<&ConnKind>| l.map(|k| k.listener.to_string());
        // Bound to the unspecified address: any local address of its port.
        assert_eq!(
            name(admission.kind_of(&at("127.0.0.1", any_port))),
            Some("a".into())
        );
        assert_eq!(
            name(admission.kind_of(&at("192.0.2.7", any_port))),
            Some("a".into())
        );
        assert_eq!(
            name(admission.kind_of(&at("127.0.0.1", lo_port))),
            Some("b".into())
        );
        assert_eq!(name(admission.kind_of(&at("127.0.0.2", lo_port))), None);

        // `[::]` and `0.0.0.0` on one port (IPv6 listeners are
        // IPV6_V6ONLY): each connection goes to its own family's.
        let (v6, v4) = (
            admission.registry.kind("http", "v6"),
            admission.registry.kind("http", "v4"),
        );
        let both = HttpAdmission {
            registry: admission.registry.clone(),
            kinds: Arc::new(vec![(at("::", 9090), v6), (at("0.0.0.0", 9090), v4)]),
        };
        assert_eq!(
            name(both.kind_of(&at("127.0.0.1", 9090))),
            Some("v4".into())
        );
        assert_eq!(name(both.kind_of(&at("::1", 9090))), Some("v6".into()));
    }
}
