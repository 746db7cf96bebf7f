//! The privileged parent (started as root): checks the service user, binds
//! the listeners, opens the TLS files, starts the same program as that user
//! with them passed at fd 3.., forwards signals, upgrades on SIGHUP or
//! SIGUSR2 (a new child of the binary on disk, with freshly re-opened
//! files, takes over once ready; the old one drains), and exits with the
//! serving child's status. It never serves traffic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lifecycle_handoff::{
    ChildSpawner, Handoff, Mode, SupervisorEvent, TargetUser, UpgradeSupervisor,
};
use slog::{error, info, warn, Logger};

use crate::app::StartError;
use crate::config::Config;
use crate::spool::SpoolError;

/// Whom the service runs as: the configured user, refused when that is root
/// (or absent) unless `allow_root = true`.
pub fn service_user(config: &Config) -> Result<Option<TargetUser>, StartError> {
    let user = match config.user() {
        Some(name) => Some(TargetUser::lookup(name).map_err(StartError::User)?),
        None => None,
    };
    let runs_as_root = user.as_ref().is_none_or(TargetUser::is_root);
    if runs_as_root && !config.allow_root() {
        return Err(StartError::root(Mode::Privileged, user.as_ref()));
    }
    Ok(user)
}

/// Creates a missing spool directory for the service user (mode 0700), as
/// a package's tmpfiles.d entry would: the unprivileged service cannot
/// create it in a directory owned by root. An existing directory is left as
/// it is; the service reports clearly if it cannot write there. Returns
/// whether it created the directory (log it with [`log_spool_created`]).
pub(crate) fn prepare_spool(dir: &Path, user: &TargetUser) -> Result<bool, StartError> {
    if dir.exists() || user.is_root() {
        return Ok(false);
    }
    let made = fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .and_then(|()| std::os::unix::fs::chown(dir, Some(user.uid()), Some(user.gid())));
    made.map_err(|source| {
        StartError::Spool(SpoolError::Io {
            action: "create for the service user",
            path: dir.to_path_buf(),
            source,
        })
    })?;
    Ok(true)
}

/// The log line for a spool directory [`prepare_spool`] created.
pub(crate) fn log_spool_created(log: &Logger, dir: &Path, user: &TargetUser) {
    info!(log, "spool directory created for the service user";
        "spool" => %dir.display(), "user" => %user);
}

/// What the parent allows a child beyond its drain and abort graces to exit
/// (runtime shutdown, the last log lines) before it kills it.
const CHILD_EXIT_MARGIN: Duration = Duration::from_secs(2);

/// How long a new child told to stop may drain before the parent kills it:
/// the configured drain and abort graces, plus [`CHILD_EXIT_MARGIN`]. A new
/// child may already serve sessions it accepted from the shared listeners
/// when its upgrade fails or the service stops; they finish or get `421`
/// within these graces, as in any serving child.
fn child_grace(config: &Config) -> Duration {
    let shutdown = config.shutdown();
    shutdown.lame_duck() + shutdown.drain_grace() + shutdown.abort_grace() + CHILD_EXIT_MARGIN
}

/// How much lower than the parent an upgrade's new child starts (its
/// threads are set back once it is ready): its start-up then yields to the
/// serving generation and its clients instead of delaying their greetings
/// on a machine with few cores. See `UpgradeSupervisor::start_niceness`.
const UPGRADE_START_NICENESS: i32 = 10;

/// Whether an upgrade's new child also starts under `SCHED_IDLE`, so that
/// every waking thread of the serving generation preempts its start-up at
/// once (nice 10 alone halved the upgrade-time p99 of connect-to-greeting,
/// `SCHED_IDLE` halved it again; BENCHMARKS.md). See
/// `UpgradeSupervisor::start_idle`.
const UPGRADE_START_IDLE: bool = true;

/// The privileged parent's whole life; returns the exit status to exit with
/// (the serving child's, 128 + signal when it was killed). `supervisor` must
/// have been created before any other thread (it blocks the signals it
/// handles).
pub fn supervise(
    config: &Config,
    mut handoff: Handoff,
    supervisor: UpgradeSupervisor,
    log: &Logger,
) -> Result<i32, StartError> {
    // The user first: an unknown user or a refused root fails before
    // anything is bound.
    let user = service_user(config)?;
    handoff
        .prepare(&config.listener_specs(), &[])
        .map_err(StartError::Handoff)?;
    for l in &handoff.inventory().listeners {
        info!(log, "listener bound"; "listener" => l.spec.name(), "address" => %l.spec.address());
    }
    // Opened here, as root, and passed on; loading them checks them before
    // the child exists. The supervisor re-opens them for every upgrade.
    drop(crate::app::open_tls(config, &mut handoff, log)?);
    // The spool directory last: a start that fails on a port in use or a
    // bad certificate leaves nothing behind.
    if let Some(user) = &user {
        if prepare_spool(config.spool_dir(), user)? {
            log_spool_created(log, config.spool_dir(), user);
        }
    }
    let kept = handoff.into_inventory();
    let mut spawner = ChildSpawner::new().map_err(StartError::Handoff)?;
    if let Some(user) = &user {
        spawner = spawner.user(user.clone());
    }
    let user = user
        .as_ref()
        .map_or_else(|| "root (allow_root)".to_owned(), ToString::to_string);
    let grace = child_grace(config);
    let control = crate::control::bind_socket(config).map_err(StartError::Handoff)?;
    if let Some(control) = &control {
        info!(log, "control socket listening"; "path" => %control.path().display(),
            "group" => config.control_group().unwrap_or("(root only)"));
    }
    info!(log, "supervising"; "program" => %spawner.program_path().display(), "user" => &user,
        "child_grace" => ?grace);
    let code = supervisor
        .child_grace(grace)
        .start_niceness(UPGRADE_START_NICENESS)
        .start_idle(UPGRADE_START_IDLE)
        .control_socket(control)
        .run(spawner, kept, |event| log_event(log, &user, event))
        .map_err(StartError::Handoff)?;
    Ok(code)
}

/// One log line per supervisor event, naming the generations involved.
fn log_event(log: &Logger, user: &str, event: &SupervisorEvent) {
    let text = event.to_string();
    match event {
        SupervisorEvent::Started { generation, pid } => {
            info!(log, "service started"; "child" => pid, "generation" => generation, "user" => user)
        }
        SupervisorEvent::Ready { generation, pid } => {
            info!(log, "service ready"; "child" => pid, "generation" => generation)
        }
        SupervisorEvent::UpgradeStarted { from, to, signal } => {
            info!(log, "upgrade started"; "from" => from, "to" => to, "signal" => signal)
        }
        SupervisorEvent::UpgradeSucceeded {
            from,
            to,
            pid,
            stats,
        } => info!(log, "upgrade succeeded";
            "from" => from, "to" => to, "child" => pid, "upgrades_ok" => stats.succeeded,
            "upgrades_failed" => stats.failed, "detail" => text),
        SupervisorEvent::UpgradeFailed {
            from,
            to,
            failure,
            stats,
        } => error!(log, "upgrade failed";
            "from" => from, "to" => to, "reason" => %failure, "upgrades_ok" => stats.succeeded,
            "upgrades_failed" => stats.failed, "detail" => text),
        SupervisorEvent::OldChildExited {
            generation,
            pid,
            code,
        } => {
            info!(log, "old generation exited"; "generation" => generation, "child" => pid, "status" => code)
        }
        SupervisorEvent::CandidateExited {
            generation,
            pid,
            code,
            killed,
        } => {
            let (killed, code) = (*killed, *code);
            if killed {
                warn!(log, "stopped new generation killed"; "generation" => generation, "child" => pid,
                    "status" => code, "detail" => text)
            } else {
                info!(log, "stopped new generation exited"; "generation" => generation, "child" => pid,
                    "status" => code)
            }
        }
        SupervisorEvent::ServingExited {
            generation,
            pid,
            code,
        } => {
            info!(log, "service exited"; "generation" => generation, "child" => pid, "status" => code)
        }
        SupervisorEvent::NotifyFailed { .. } => warn!(log, "{}", text),
        SupervisorEvent::WatchdogStarted {
            child_checked: false,
            ..
        } => warn!(log, "{}", text),
        SupervisorEvent::WatchdogWithheld { .. } => error!(log, "{}", text),
        SupervisorEvent::PriorityRestored { error: Some(_), .. }
        | SupervisorEvent::StartPriorityLifted { error: Some(_), .. }
        | SupervisorEvent::OwnPriorityNotRestored { .. } => warn!(log, "{}", text),
        _ => info!(log, "{}", text),
    }
}
