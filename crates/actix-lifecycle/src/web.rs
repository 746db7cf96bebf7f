//! `Lifecycle::serve_actix_web`: an actix-web `HttpServer` served on a
//! listener of the broker, with every connection in the registry and the
//! server's stop tied to the lifecycle's phases.

use std::fmt;

use actix_http::{Request, Response};
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServerHandle, Service, ServiceFactory};
use actix_web::{Error, HttpServer};
use lifecycle_handoff::Network;
use slog::{error, info};

use crate::error::{LifecycleError, ListenerError};
use crate::lifecycle::Lifecycle;

impl Lifecycle {
    /// Serves `server` on the listener `name` of the inventory, as protocol
    /// `http`:
    ///
    /// * takes the socket from the broker ([`take_listener`](Self::take_listener):
    ///   [`ready`](Self::ready) counts it as served);
    /// * registers every connection actix-web accepts on the registry shard
    ///   of the worker thread that serves it
    ///   ([`RegistryHandle::register_on_current_thread`](crate::RegistryHandle::register_on_current_thread)),
    ///   so the gauges count it until actix-web drops it;
    /// * turns actix-web's own signal handling off (the lifecycle's
    ///   coordinator has SIGTERM/SIGINT) and sets its `shutdown_timeout` to
    ///   the drain grace;
    /// * at `Draining`, stops the server gracefully: it stops accepting,
    ///   closes idle keep-alive connections at once and lets requests in
    ///   flight finish.
    ///
    /// Admission [`Limits`](crate::Limits) do not apply here: every
    /// connection actix-web accepts is registered and counted, none is
    /// refused (the lifecycle cannot answer a refused connection through
    /// the application's own services). Bound such a listener with
    /// actix-web's own `max_connections` and `backlog`, or keep it behind
    /// a proxy. A server that wants its connections admitted builds that
    /// itself: [`RegistryShard::admit_untracked`](crate::RegistryShard::admit_untracked)
    /// in its own `on_connect`, and a middleware that answers a refused
    /// connection (the gateway's HTTP server does this, with `503` and
    /// `Retry-After`).
    ///
    /// What the abort can and cannot cut: actix-web's connections are not
    /// [`Tracked`](crate::Tracked) streams, so the lifecycle's abort marks
    /// them but cannot end a request in flight. actix-web's
    /// `shutdown_timeout` (the drain grace) does: when it expires the
    /// workers stop and drop every connection left, which unregisters it.
    /// A request that takes longer than the drain grace is cut then, not
    /// at `Aborting`.
    ///
    /// Returns the server's handle; the server runs on the current arbiter.
    /// Fails with [`LifecycleError::ListenerStart`] naming the listener
    /// when the broker has no such socket or actix-web cannot use it.
    pub async fn serve_actix_web<F, I, S, B>(
        &self,
        name: &str,
        server: HttpServer<F, I, S, B>,
    ) -> Result<ServerHandle, LifecycleError>
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<Request, Config = AppConfig> + 'static,
        S::Error: Into<Error> + 'static,
        S::InitError: fmt::Debug,
        S::Response: Into<Response<B>> + 'static,
        <S::Service as Service<Request>>::Future: 'static,
        S::Service: 'static,
        B: MessageBody + 'static,
    {
        let passed = self.take_listener(name, "http").await?;
        let kind = self.connections().kind("http", name);
        let registry = self.connections().clone();
        let server = server
            .on_connect(move |_io, extensions| {
                extensions.insert(registry.register_on_current_thread(&kind));
            })
            .disable_signals()
            .shutdown_timeout(self.drain_grace().as_secs().max(1));
        let adopt = |source| LifecycleError::ListenerStart {
            name: name.to_owned(),
            source: ListenerError::Adopt {
                name: name.to_owned(),
                source,
            },
        };
        let server = match passed.spec.network() {
            Network::Tcp => server.listen(std::net::TcpListener::from(passed.fd)),
            Network::Unix => server.listen_uds(std::os::unix::net::UnixListener::from(passed.fd)),
        }
        .map_err(adopt)?
        .run();
        let handle = server.handle();
        let log = self.logger().clone();
        let coordinator = self.coordinator().clone();
        let listener = name.to_owned();
        actix_rt::spawn(async move {
            if let Err(e) = server.await {
                error!(log, "actix-web server failed"; "listener" => &listener, "error" => %e);
                coordinator.do_send(crate::Fatal {
                    reason: format!("actix-web server on listener {listener:?} failed: {e}"),
                });
            }
        });
        let (shutdown, stop, log) = (
            self.shutdown_handle(),
            handle.clone(),
            self.logger().clone(),
        );
        let listener = name.to_owned();
        actix_rt::spawn(async move {
            shutdown.draining().await;
            info!(log, "actix-web: stop accepting, close idle connections, finish requests";
                "listener" => &listener);
            stop.stop(true).await;
        });
        Ok(handle)
    }
}
