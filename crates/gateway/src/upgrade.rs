//! The gateway's part in zero-downtime upgrades (the privileged parent's
//! `UpgradeSupervisor` does the rest): the serving child reports ready over
//! the channel its parent passed, publishes its generation and the parent's
//! upgrade counters as metrics (from its start-up lineage, then from every
//! update the parent sends after an upgrade outcome), and tells an upgrade
//! drain from a stop ([`UpgradeDrain`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_lifecycle::{
    EndLameDuck, ListenerActor, Phase, ShutdownCoordinator, ShutdownHandle, StopAccepting,
};
use lifecycle_handoff::{ChannelWatch, Lineage, ReadyChannel};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use slog::{info, warn, Logger};

/// `<prefix>_upgrades_total{result}` and `<prefix>_generation`, as the
/// parent counts them.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let m = lifecycle_gateway::UpgradeMetrics::register(&registry, "lifecycle")?;
/// m.set(3, 5, 1);
/// m.set(3, 5, 2); // totals, not increments
/// let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
/// assert!(text.contains("lifecycle_upgrades_total{result=\"ok\"} 5"), "{text}");
/// assert!(text.contains("lifecycle_upgrades_total{result=\"failed\"} 2"), "{text}");
/// assert!(text.contains("lifecycle_generation 3"), "{text}");
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct UpgradeMetrics {
    total: IntCounterVec,
    generation: IntGauge,
    seen: Arc<[AtomicU64; 2]>,
}

impl UpgradeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_upgrades_total"),
                "Upgrades of the service by the privileged parent, by result (ok, failed).",
            ),
            &["result"],
        )?;
        let generation = IntGauge::new(
            format!("{prefix}_generation"),
            "Generation of the serving process (1 for the first child of the parent, +1 per upgrade attempt; 0 without an upgrading parent).",
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        for result in ["ok", "failed"] {
            total.with_label_values(&[result]);
        }
        Ok(UpgradeMetrics {
            total,
            generation,
            seen: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        })
    }

    /// Sets the generation and the parent's totals (counters only grow).
    pub fn set(&self, generation: u64, ok: u64, failed: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        for (i, (result, value)) in [("ok", ok), ("failed", failed)].into_iter().enumerate() {
            let before = self.seen[i].fetch_max(value, Ordering::Relaxed);
            if value > before {
                self.total
                    .with_label_values(&[result])
                    .inc_by(value - before);
            }
        }
    }

    /// Counts one failed upgrade of this process's own (a successor
    /// hand-over without a privileged parent).
    pub(crate) fn record_failed(&self) {
        self.seen[1].fetch_add(1, Ordering::Relaxed);
        self.total.with_label_values(&["failed"]).inc();
    }

    /// Sets them from this process's start-up lineage: the upgrade that made
    /// it the serving child counts as succeeded.
    pub fn set_lineage(&self, lineage: &Lineage) {
        self.set(
            lineage.generation,
            lineage.succeeded_including_self(),
            lineage.upgrades_failed,
        );
    }
}

/// Whether this process drains because its parent upgraded the service
/// (a successor accepts from the same sockets) rather than because the
/// service stops.
///
/// The upgrading parent closes an old child's readiness channel before it
/// sends SIGTERM, and keeps it open when it forwards a stop, so the answer
/// is known as soon as the drain starts. An upgrade drain stops accepting at
/// once and lets every open SMTP session finish its transaction (or make
/// one, if it had none since the drain began) before `421` moves it to the
/// successor: no client that connected is turned away. A stop keeps the
/// documented shutdown behaviour (`421` to new sessions and at the next
/// command).
///
/// Without an upgrading parent (the default) every drain is a stop:
///
/// ```
/// let drain = lifecycle_gateway::UpgradeDrain::default();
/// assert!(!drain.is_upgrade());
/// ```
#[derive(Debug, Clone, Default)]
pub struct UpgradeDrain {
    state: Arc<DrainState>,
}

#[derive(Debug, Default)]
struct DrainState {
    /// The channel to an upgrading parent, if any.
    watch: Option<ChannelWatch>,
    /// Seen closed, or marked by this process's own hand-over.
    seen: AtomicBool,
    /// When this process first saw that its drain is an upgrade's.
    since: OnceLock<Instant>,
}

impl UpgradeDrain {
    /// Watches the channel to an upgrading parent.
    pub fn new(watch: ChannelWatch) -> Self {
        UpgradeDrain {
            state: Arc::new(DrainState {
                watch: Some(watch),
                seen: AtomicBool::new(false),
                since: OnceLock::new(),
            }),
        }
    }

    /// An upgrade drain from the start (for the session tests).
    #[cfg(test)]
    pub(crate) fn upgrading() -> Self {
        let drain = UpgradeDrain::default();
        drain.mark();
        drain
    }

    /// An upgrade drain that began `age` ago (for the session tests).
    #[cfg(test)]
    pub(crate) fn upgrading_for(age: Duration) -> Self {
        let drain = UpgradeDrain::default();
        let began = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let _ = drain.state.since.set(began);
        drain.mark();
        drain
    }

    /// This process handed over to a successor itself: its drain is an
    /// upgrade's.
    pub(crate) fn mark(&self) {
        self.state.since.get_or_init(Instant::now);
        self.state.seen.store(true, Ordering::Relaxed);
    }

    /// How long ago this process first saw that its drain is an upgrade's
    /// (`None`: it is not, or not yet seen).
    pub fn upgrade_age(&self) -> Option<Duration> {
        if !self.is_upgrade() {
            return None;
        }
        self.state.since.get().map(Instant::elapsed)
    }

    /// True once the parent closed this process's channel, or this process
    /// handed over to a successor: the drain, if any, is an upgrade's.
    /// Stays true once seen.
    pub fn is_upgrade(&self) -> bool {
        if self.state.seen.load(Ordering::Relaxed) {
            return true;
        }
        let closed = self
            .state
            .watch
            .as_ref()
            .is_some_and(ChannelWatch::parent_closed);
        if closed {
            self.state.since.get_or_init(Instant::now);
            self.state.seen.store(true, Ordering::Relaxed);
        }
        closed
    }
}

/// Test seam: a delay (such as `"1h"`) between the moment every listener
/// accepts and the ready report to the parent. The end-to-end tests use it
/// to make a new child that serves before it is ready; nothing else should
/// set it.
pub(crate) const TEST_READY_DELAY_VAR: &str = "LIFECYCLE_GATEWAY_TEST_READY_DELAY";

/// The delay [`TEST_READY_DELAY_VAR`] asks for (a bad value is logged and
/// ignored).
fn test_ready_delay(log: &Logger) -> Option<Duration> {
    let value = std::env::var(TEST_READY_DELAY_VAR).ok()?;
    match humantime::parse_duration(&value) {
        Ok(delay) => {
            warn!(log, "ready report delayed (test seam)"; "variable" => TEST_READY_DELAY_VAR, "delay" => %value);
            Some(delay)
        }
        Err(e) => {
            warn!(log, "ignoring a bad test delay"; "variable" => TEST_READY_DELAY_VAR, "value" => %value, "error" => %e);
            None
        }
    }
}

/// Writes the ready message; false (logged) when the parent cannot hear it.
fn notify_parent(ready: &mut ReadyChannel, log: &Logger) -> bool {
    if let Err(e) = ready.notify_ready() {
        warn!(log, "cannot report ready to the parent"; "error" => %e);
        return false;
    }
    info!(log, "reported ready to the parent");
    true
}

/// Tells the parent this child is ready, then follows the parent's updates
/// in a thread of its own (they end when the parent closes the channel).
pub(crate) fn report_ready(mut ready: ReadyChannel, metrics: UpgradeMetrics, log: Logger) {
    let delay = test_ready_delay(&log);
    if delay.is_none() && !notify_parent(&mut ready, &log) {
        return;
    }
    let thread_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("upgrade-updates".to_owned())
        .spawn(move || {
            let log = thread_log;
            if let Some(delay) = delay {
                std::thread::sleep(delay);
                if !notify_parent(&mut ready, &log) {
                    return;
                }
            }
            loop {
                match ready.recv_update() {
                    Ok(Some(update)) => {
                        info!(log, "upgrade counters from the parent";
                            "serving_generation" => update.generation,
                            "upgrades_ok" => update.upgrades_ok, "upgrades_failed" => update.upgrades_failed);
                        // The generation gauge is this process's own.
                        let own = metrics.generation.get();
                        metrics.set(
                            u64::try_from(own).unwrap_or(0),
                            update.upgrades_ok,
                            update.upgrades_failed,
                        );
                    }
                    Ok(None) => return,
                    Err(e) => {
                        warn!(log, "bad update from the parent"; "error" => %e);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(log, "cannot follow the parent's upgrade updates"; "error" => %e);
    }
}

/// When the shutdown starts and it is an upgrade's, ends the lame duck at
/// once: the successor already serves the same sockets (and answers
/// `/readyz`), so there is no load balancer to wait for.
pub(crate) fn skip_lame_duck_on_upgrade(
    shutdown: ShutdownHandle,
    drain: UpgradeDrain,
    coordinator: Addr<ShutdownCoordinator>,
    log: Logger,
) {
    actix::spawn(async move {
        shutdown.shutting_down().await;
        if shutdown.phase() == Phase::LameDuck && drain.is_upgrade() {
            info!(log, "upgrade: no lame duck, draining now");
            coordinator.do_send(EndLameDuck);
        }
    });
}

/// When the drain starts and it is an upgrade's, stops every listener
/// accepting at once (the successor accepts from the same sockets); a stop
/// keeps accepting until `Aborting`, to answer "shutting down".
pub(crate) fn stop_accepting_on_upgrade(
    shutdown: ShutdownHandle,
    drain: UpgradeDrain,
    actors: Vec<(String, Addr<ListenerActor>)>,
    http: Option<actix_web::dev::ServerHandle>,
    log: Logger,
) {
    actix::spawn(async move {
        shutdown.draining().await;
        if !drain.is_upgrade() {
            info!(log, "draining to stop");
            return;
        }
        info!(log, "draining for an upgrade";
            "detail" => "a newer generation accepts from the same sockets; this one stops accepting now");
        if let Some(http) = http {
            http.pause().await;
        }
        for (name, actor) in actors {
            if actor.send(StopAccepting).await.is_err() {
                warn!(log, "listener gone before it stopped accepting"; "listener" => name);
            }
        }
    });
}
