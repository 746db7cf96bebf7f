//! The privileged parent (started as root): checks the service user, binds
//! the listeners, starts the same program as that user with the sockets
//! passed at fd 3.., forwards signals, and exits with the child's status.
//! It never serves traffic.

use lifecycle_handoff::{ChildSpawner, Handoff, Supervisor, TargetUser};
use slog::{info, Logger};

use crate::app::StartError;
use crate::config::Config;

/// Whom the service runs as: the configured user, refused when that is root
/// (or absent) unless `allow_root = true`.
pub fn service_user(config: &Config) -> Result<Option<TargetUser>, StartError> {
    let user = match config.user() {
        Some(name) => Some(TargetUser::lookup(name).map_err(StartError::User)?),
        None => None,
    };
    let runs_as_root = user.as_ref().is_none_or(TargetUser::is_root);
    if runs_as_root && !config.allow_root() {
        return Err(StartError::Root {
            user: user.map(|u| u.to_string()),
        });
    }
    Ok(user)
}

/// The privileged parent's whole life; returns the exit status to exit with
/// (the child's, 128 + signal when it was killed). `supervisor` must have
/// been created before any other thread (it blocks the forwarded signals).
pub fn supervise(
    config: &Config,
    mut handoff: Handoff,
    supervisor: &Supervisor,
    log: &Logger,
) -> Result<i32, StartError> {
    // The user first: an unknown user or a refused root fails before
    // anything is bound.
    let user = service_user(config)?;
    handoff
        .prepare(&config.listener_specs(), &[])
        .map_err(StartError::Handoff)?;
    // Opened here, as root, and passed on; loading them checks them before
    // the child exists.
    drop(crate::app::open_tls(config, &mut handoff, log)?);
    let mut kept = handoff.into_inventory();
    for l in &kept.listeners {
        info!(log, "listener bound"; "listener" => l.spec.name(), "address" => %l.spec.address());
    }
    let mut spawner = ChildSpawner::new().map_err(StartError::Handoff)?;
    if let Some(user) = &user {
        spawner = spawner.user(user.clone());
    }
    let mut child = spawner.spawn(&kept).map_err(StartError::Handoff)?;
    // The child has its copies of the secret files; the listeners stay here
    // for upgrades.
    kept.close_files();
    info!(log, "service started"; "child" => child.id(),
        "user" => user.as_ref().map_or_else(|| "root (allow_root)".to_owned(), ToString::to_string));
    let code = supervisor.wait(&mut child).map_err(StartError::Handoff)?;
    info!(log, "service exited"; "child" => child.id(), "status" => code);
    Ok(code)
}
