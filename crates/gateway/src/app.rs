//! The running service: listeners taken or bound through the hand-off, the
//! actix-lifecycle actors (broker, registry, shutdown coordinator), one
//! `ListenerActor` per SMTP and IMAP listener, and the HTTP server on the
//! sockets it takes from the broker.

mod listeners;

use std::sync::Arc;

use actix_lifecycle::{Lifecycle, LifecycleError};
use lifecycle_handoff::{Handoff, HeldSignals, Inventory, Lineage, Mode, ReadyChannel, TargetUser};
use slog::{error, info, o, warn, Logger};

use crate::config::Config;
use crate::control::{serve_control, ControlContext, UpgradeDesk};
use crate::handover::{Handover, HandoverTask};
use crate::http::Readiness;
use crate::metrics::GatewayMetrics;
use crate::notify::Notifications;
use crate::spool::{Spool, SpoolError};
use crate::tls::{tls_server_config, TlsError};
use crate::tls_stream::TlsAcceptor;
use crate::upgrade::{
    report_ready, skip_lame_duck_on_upgrade, stop_accepting_on_upgrade, UpgradeMetrics,
};
#[cfg(test)]
pub(crate) use listeners::tls_session;
use listeners::Sessions;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool directory cannot be used.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// Binding, taking or passing descriptors failed.
    #[error(transparent)]
    Handoff(lifecycle_handoff::Error),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configured user cannot be used.
    #[error("{0}")]
    User(#[source] lifecycle_handoff::Error),
    /// The service would run as root without `allow_root = true`: what was
    /// found in this start mode, and the fix for this mode (see
    /// [`StartError::root`]).
    #[error("refusing to run the service as root ({found}): {fix}")]
    Root {
        /// What makes it run as root, in this mode.
        found: String,
        /// What to change, for this mode.
        fix: &'static str,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The lifecycle actors could not start.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A listener did not start.
    #[error("listener `{listener}`: {reason}")]
    Listener {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP server could not use its listeners.
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
    /// The actor system failed.
    #[error("actix system: {0}")]
    System(#[from] std::io::Error),
}

impl StartError {
    /// The refusal to serve as root in start `mode`, with `user` the
    /// configured user when that is root (`None`: no `user` set).
    pub fn root(mode: Mode, user: Option<&TargetUser>) -> StartError {
        let found = match (mode, user) {
            (_, Some(user)) => format!("user {user}"),
            (Mode::Privileged, None) => "started as root, no `user` in the config".to_owned(),
            (Mode::Systemd, None) => "started as root under socket activation (a unit without \
                `User=`, or systemd-socket-activate run as root), no `user` in the config"
                .to_owned(),
            (Mode::Inherited, None) => "started as root by a parent that passed the sockets \
                and kept root, no `user` in the config"
                .to_owned(),
            (Mode::Immediate, None) => "running as root, no `user` in the config".to_owned(),
        };
        let fix = match mode {
            Mode::Privileged | Mode::Immediate => {
                "set `user` to an unprivileged user (the root parent binds the ports and drops \
                 to it), or set `allow_root = true` to serve as root (not recommended)"
            }
            Mode::Systemd => {
                "set `user` in the config to an unprivileged user (the gateway drops to it in \
                 place before serving), or `User=` in the unit, or set `allow_root = true` to \
                 serve as root (not recommended)"
            }
            Mode::Inherited => {
                "set `user` in the config to an unprivileged user (the gateway drops to it in \
                 place before serving), or have the parent start it as that user, or set \
                 `allow_root = true` to serve as root (not recommended)"
            }
        };
        StartError::Root { found, fix }
    }

    /// The exit status for this error: 2 when the configuration must change
    /// (unknown user, root not allowed), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::User(_) | StartError::Root { .. } | StartError::Tls(_) => 2,
            _ => 1,
        }
    }
}

/// Serves in this process (immediate, inherited or systemd mode): takes or
/// binds every configured listener through `handoff`, then [`run`]s.
///
/// Refuses to serve as root without `allow_root`: a process started as
/// root in systemd or inherited mode calls
/// [`drop_in_place`](crate::drop_in_place) first, while it has one thread.
///
/// `held` are SIGHUP and SIGUSR2 as `main` held them (see [`HeldSignals`]);
/// they are released in this thread once their handlers exist, before the
/// service reports ready.
pub fn serve(
    config: &Config,
    mut handoff: Handoff,
    held: HeldSignals,
    log: &Logger,
) -> Result<i32, StartError> {
    if handoff.mode() == Mode::Inherited && !nix::unistd::getuid().is_root() {
        // A child of the privileged parent must not be able to become root.
        lifecycle_handoff::verify_cannot_regain_root().map_err(StartError::Handoff)?;
    }
    if nix::unistd::geteuid().is_root() && !config.allow_root() {
        // Serving here means serving as root: `drop_in_place` (run first
        // thing in `main`) did not drop, because no non-root `user` is set.
        let user = config.user().and_then(|name| TargetUser::lookup(name).ok());
        return Err(match user {
            Some(user) if !user.is_root() => StartError::Root {
                found: format!("`user` is {user}, but this process did not drop to it"),
                fix: "call `drop_in_place` first thing in main, before any other thread starts",
            },
            user => StartError::root(handoff.mode(), user.as_ref()),
        });
    }
    // Under an upgrading parent: the channel to report ready on, and this
    // child's generation with the parent's counters.
    let ready = handoff.take_ready_channel();
    let lineage = handoff.lineage();
    if let Some(l) = &lineage {
        info!(log, "generation"; "generation" => l.generation, "upgrades_ok" => l.upgrades_ok, "upgrades_failed" => l.upgrades_failed);
    }
    // A child of the privileged parent (started with a parent-death signal)
    // leaves upgrades and the control socket to it; any other serving
    // process serves the control socket and hands over to a successor of
    // its own (on SIGHUP or `ctl upgrade`).
    let supervised = ready.is_some() && nix::sys::prctl::get_pdeathsig().ok().flatten().is_some();
    let control = match supervised {
        true => crate::control::child_endpoint(&mut handoff, log),
        false => crate::control::serving_socket(config, &mut handoff, log)
            .map_err(StartError::Handoff)?,
    };
    handoff
        .prepare(&config.listener_specs(), &[])
        .map_err(StartError::Handoff)?;
    let what = match handoff.mode() {
        Mode::Inherited | Mode::Systemd => "listener taken",
        Mode::Privileged | Mode::Immediate => "listener bound",
    };
    for l in &handoff.inventory().listeners {
        info!(log, "{}", what; "listener" => l.spec.name(), "address" => %l.spec.address());
    }
    let tls = open_tls(config, &mut handoff, log)?;
    let notify = Notifications::for_handoff(&handoff);
    let mode = handoff.mode();
    let inventory = handoff.into_inventory();
    let handover = if supervised {
        None
    } else {
        let files = config
            .tls()
            .map(|t| vec![t.cert().to_path_buf(), t.key().to_path_buf()])
            .unwrap_or_default();
        let names: Vec<&str> = config.listeners().iter().map(|l| l.name()).collect();
        let handover =
            Handover::new(&inventory, &names, files, lineage).and_then(|h| match &control {
                Some(socket) => Ok(h.control(crate::control::passed_on(socket)?)),
                None => Ok(h),
            });
        match handover {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(log, "cannot keep the listeners for a successor; SIGHUP will not upgrade"; "error" => %e);
                None
            }
        }
    };
    let upgrade = Upgrade {
        ready,
        lineage,
        handover,
        supervised,
        held: Some(held),
        parent: Some(nix::unistd::getppid()),
        control,
        mode: Some(mode),
    };
    run(config, log, inventory, tls, upgrade, notify)
}

/// How the service takes part in upgrades: a child of an upgrading parent
/// (see `lifecycle_handoff::UpgradeSupervisor`) or of a predecessor gets a
/// ready channel and its lineage; a process that upgrades itself on SIGHUP
/// keeps a [`Handover`]. All empty: SIGHUP is logged and ignored.
#[derive(Debug, Default)]
pub struct Upgrade {
    /// Where to report ready once every listener accepts.
    pub ready: Option<ReadyChannel>,
    /// This process's generation and the parent's upgrade counters.
    pub lineage: Option<Lineage>,
    /// What a successor of this process needs (no privileged parent).
    pub handover: Option<Handover>,
    /// A child of the privileged parent, which upgrades it: the parent
    /// closing the ready channel means "an upgrade took over, drain".
    pub supervised: bool,
    /// SIGHUP and SIGUSR2 as held since the start of `main`: released in
    /// the thread that calls [`run`] once their handlers are installed,
    /// before the service reports ready, so that one that came early is
    /// handled then instead of terminating the process. `None`: not held.
    pub held: Option<HeldSignals>,
    /// This process's parent at start. For a successor started by its
    /// predecessor (a ready channel, not `supervised`) that is the
    /// predecessor: once it exited, this process names itself systemd's
    /// main process (`MAINPID=`).
    pub parent: Option<nix::unistd::Pid>,
    /// The control socket this process serves (no privileged parent serves
    /// it): bound at start, or taken over from the predecessor.
    pub control: Option<lifecycle_handoff::ControlSocket>,
    /// The start mode, for the control socket's `status`.
    pub mode: Option<Mode>,
}

/// Opens the `[tls]` certificate and key with
/// [`Handoff::open_privileged`] (the root parent opens them and passes
/// them on; the child takes what was passed; other modes open them) and
/// builds the TLS configuration from them. `None` without `[tls]`.
pub fn open_tls(
    config: &Config,
    handoff: &mut Handoff,
    log: &Logger,
) -> Result<Option<TlsAcceptor>, StartError> {
    let Some(tls) = config.tls() else {
        return Ok(None);
    };
    let cert = handoff
        .open_privileged(tls.cert())
        .map_err(StartError::Handoff)?;
    let key = handoff
        .open_privileged(tls.key())
        .map_err(StartError::Handoff)?;
    let server = tls_server_config(tls.cert(), cert, tls.key(), key)?;
    info!(log, "tls loaded"; "cert" => %tls.cert().display(), "key" => %tls.key().display());
    Ok(Some(TlsAcceptor::from(server)))
}

/// Runs the gateway on `inventory` until it stops; returns the process exit
/// status (0 after a clean signal-initiated stop).
/// `tls` serves the listeners with a `tls` option (see [`open_tls`]);
/// `upgrade` says how this process takes part in upgrades; once every
/// listener accepts, `notify` tells systemd (see [`Notifications`]).
pub fn run(
    config: &Config,
    log: &Logger,
    inventory: Inventory,
    tls: Option<TlsAcceptor>,
    upgrade: Upgrade,
    notify: Notifications,
) -> Result<i32, StartError> {
    raise_open_files_limit(log);
    let spool = Arc::new(Spool::open(config.spool_dir(), log)?);
    let system = actix::System::new();
    system.block_on(async {
        let lifecycle = Lifecycle::builder(inventory)
            .logger(log.clone())
            .metrics_prefix(config.metrics_prefix())
            .lame_duck(config.shutdown().lame_duck())
            .drain_grace(config.shutdown().drain_grace())
            .abort_grace(config.shutdown().abort_grace())
            .start()?;
        let sessions = Sessions {
            spool,
            tls,
            metrics: GatewayMetrics::register(lifecycle.metrics(), config.metrics_prefix())?,
            drain: listeners::upgrade_drain(&upgrade, log),
        };
        start(config, log, &lifecycle, sessions, upgrade, notify).await
    })?;
    let code = system.run_with_code()?;
    info!(log, "exiting"; "status" => code);
    Ok(code)
}

/// Starts every listener with `sessions`, reports ready (to systemd through
/// `notify`, to the parent through `upgrade`'s channel) once all accept,
/// and starts what takes part in upgrades and stops: the control socket,
/// the hand-over task, the drain watchers.
async fn start(
    config: &Config,
    log: &Logger,
    lifecycle: &Lifecycle,
    sessions: Sessions,
    upgrade: Upgrade,
    notify: Notifications,
) -> Result<(), StartError> {
    let upgrade_metrics = UpgradeMetrics::register(lifecycle.metrics(), config.metrics_prefix())?;
    // The first process of a service (no lineage) is generation 1: the one
    // its successor, generation 2, names as the one it took over from.
    let lineage = upgrade.lineage.unwrap_or(Lineage::FIRST);
    upgrade_metrics.set_lineage(&lineage);
    let generation = lineage.generation;
    let upgrade_drain = sessions.drain.clone();
    let (actors, http) = listeners::start_streams(config, log, lifecycle, &sessions).await?;
    let readiness = Readiness::new();
    let http_handle = listeners::start_http(config, log, lifecycle, http, &readiness)?;
    // Every listener serves (or the first that cannot is named), and what
    // nobody claimed is closed.
    let closed = lifecycle.ready().await?.closed_unclaimed;
    readiness.set_ready(true);
    // systemd (Type=notify) when this process is the main one; a child of
    // the privileged parent stays silent (see `Notifications`).
    let notifier = notify.start(lifecycle, log);
    // A successor of a predecessor: systemd's main process once that one exited.
    if let (Some(notifier), Some(parent), Some(_), false) = (
        &notifier,
        upgrade.parent,
        &upgrade.ready,
        upgrade.supervised,
    ) {
        crate::handover::announce_main_pid_after_parent(
            parent,
            notifier.clone(),
            generation,
            log.new(o!("generation" => generation)),
        );
    }
    // The control socket (no privileged parent): `upgrade` requests go to
    // the hand-over task through the desk.
    let (desk, requests) = match upgrade.control {
        Some(socket) => {
            let (desk, requests) = UpgradeDesk::new(&lineage);
            let path = socket.path().to_path_buf();
            serve_control(
                socket,
                ControlContext {
                    mode: upgrade.mode.map_or("immediate", Mode::as_str),
                    generation,
                    predecessor: (upgrade.parent)
                        .filter(|_| upgrade.lineage.is_some() && !upgrade.supervised),
                    registry: lifecycle.connections().clone(),
                    shutdown: lifecycle.shutdown_handle(),
                    coordinator: lifecycle.coordinator().clone(),
                    desk: desk.clone(),
                    path,
                    log: log.new(o!("generation" => generation, "control" => true)),
                },
            );
            (Some(desk), Some(requests))
        }
        None => (None, None),
    };
    // Installs the SIGHUP/SIGUSR2 handlers and releases the held signals
    // (this is the thread that held them): before `ready`.
    HandoverTask {
        handover: upgrade.handover.map(Arc::new),
        held: upgrade.held,
        supervised: upgrade.supervised,
        coordinator: lifecycle.coordinator().clone(),
        shutdown: lifecycle.shutdown_handle(),
        notifier,
        drain: upgrade_drain.clone(),
        metrics: upgrade_metrics.clone(),
        generation,
        requests,
        desk,
        log: log.new(o!("generation" => generation)),
    }
    .spawn();
    skip_lame_duck_on_upgrade(
        lifecycle.shutdown_handle(),
        upgrade_drain.clone(),
        lifecycle.coordinator().clone(),
        log.new(o!("generation" => generation)),
    );
    stop_accepting_on_upgrade(
        lifecycle.shutdown_handle(),
        upgrade_drain,
        actors,
        http_handle,
        log.new(o!("generation" => generation)),
    );
    info!(log, "ready"; "listeners" => config.listeners().len(), "unclaimed_closed" => closed, "generation" => generation);
    if let Some(ready) = upgrade.ready {
        report_ready(ready, upgrade_metrics, log.clone());
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (mox among them) do at start: each connection is a descriptor, and the
/// usual soft default of 1024 is far below what a mail server needs. The
/// hard limit, which the operator sets, is left alone.
fn raise_open_files_limit(log: &Logger) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(log, "open files limit raised"; "from" => soft, "to" => hard),
            Err(e) => {
                error!(log, "cannot raise the open files limit"; "soft" => soft, "hard" => hard, "error" => %e)
            }
        },
        Ok((soft, _)) => info!(log, "open files limit"; "limit" => soft),
        Err(e) => error!(log, "cannot read the open files limit"; "error" => %e),
    }
}
