//! A service started as root with its sockets already made — by systemd
//! socket activation (a unit without `User=`, `systemd-socket-activate` run
//! as root) or by a parent that passed them and kept root — drops to the
//! configured `user` in place, before any other thread exists.

use lifecycle_handoff::{drop_privileges_in_place, Mode, TargetUser};
use slog::{info, Logger};

use crate::app::StartError;
use crate::config::Config;
use crate::parent::{log_spool_created, prepare_spool};

/// What [`drop_in_place`] did, to be logged once the logger exists.
#[derive(Debug)]
#[non_exhaustive]
pub struct DroppedInPlace {
    /// The user the process now runs as.
    pub user: TargetUser,
    /// The mode the process was started in.
    pub mode: Mode,
    /// Whether the spool directory was created for the user first.
    pub spool_created: bool,
}

impl DroppedInPlace {
    /// Logs the drop (user, uid, gid, mode) and the spool directory if it
    /// was created.
    pub fn log(&self, log: &Logger, config: &Config) {
        if self.spool_created {
            log_spool_created(log, config.spool_dir(), &self.user);
        }
        info!(log, "privileges dropped in place";
            "user" => self.user.name(), "uid" => self.user.uid(), "gid" => self.user.gid(),
            "mode" => self.mode.as_str());
    }
}

/// In systemd and inherited mode, as root: prepares the spool directory
/// for the configured `user` as the privileged start does, then drops to
/// that user in place with the privileged child's sequence and proof
/// (`setgroups([])`, `setgid`, `setuid`, `PR_SET_NO_NEW_PRIVS`, and a check
/// that root cannot be regained). Call it first thing in `main`, right
/// after `Handoff::detect`, before any thread (the logger's included)
/// starts; it refuses otherwise.
///
/// `Ok(None)`: nothing to do (another mode, not root, or root allowed with
/// `allow_root = true` and no non-root `user`). Root without a non-root
/// `user` and without `allow_root` is [`StartError::Root`], with what was
/// found and the fix for this mode.
pub fn drop_in_place(config: &Config, mode: Mode) -> Result<Option<DroppedInPlace>, StartError> {
    if !matches!(mode, Mode::Systemd | Mode::Inherited) || !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = match config.user() {
        Some(name) => Some(TargetUser::lookup(name).map_err(StartError::User)?),
        None => None,
    };
    let user = match user {
        Some(user) if !user.is_root() => user,
        root => {
            if config.allow_root() {
                return Ok(None);
            }
            return Err(StartError::root(mode, root.as_ref()));
        }
    };
    let spool_created = prepare_spool(config.spool_dir(), &user)?;
    drop_privileges_in_place(&user).map_err(StartError::Handoff)?;
    Ok(Some(DroppedInPlace {
        user,
        mode,
        spool_created,
    }))
}
