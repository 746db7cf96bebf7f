//! The four modes and the rule that picks one.

use std::fmt;

use crate::env::{VarNames, MOX_SOCKETS};
use crate::environment::Environment;
use crate::error::{Error, Result};
use crate::systemd::{LISTEN_FDS, LISTEN_PID};

/// How this process gets its listeners and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Root at start-up: bind and open here, keep a copy of each descriptor
    /// for the unprivileged child that will serve.
    Privileged,
    /// Started by a privileged parent: take descriptors 3.. as its
    /// hand-off variables declare.
    Inherited,
    /// Socket-activated by systemd: take descriptors 3.. as `LISTEN_FDS`
    /// declares; files are opened directly.
    Systemd,
    /// No hand-off: bind and open directly (development, or a user holding
    /// `CAP_NET_BIND_SERVICE`).
    Immediate,
}

impl Mode {
    /// The mode's name: `privileged`, `inherited`, `systemd`, `immediate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Privileged => "privileged",
            Mode::Inherited => "inherited",
            Mode::Systemd => "systemd",
            Mode::Immediate => "immediate",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chosen mode and why, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModeChoice {
    /// The mode.
    pub mode: Mode,
    /// Why it was chosen, in one sentence.
    pub reason: String,
    /// True when the hand-off is in mox's `MOX_SOCKETS`/`MOX_FILES` format.
    pub mox_format: bool,
}

/// The detection rule (documented on `HandoffBuilder::choose`).
pub(crate) fn choose_mode(
    names: &VarNames,
    env: &impl Environment,
    euid: u32,
    forced: Option<Mode>,
    mox_compat: bool,
) -> Result<ModeChoice> {
    let ours = names.any_present(env);
    let mox = mox_compat && env.var(MOX_SOCKETS).is_some();
    let systemd = env.var(LISTEN_FDS).is_some() || env.var(LISTEN_PID).is_some();
    let choice = |mode, reason: String, mox_format| ModeChoice {
        mode,
        reason,
        mox_format,
    };
    if let Some(mode) = forced {
        if mode == Mode::Privileged && (ours || mox) {
            return Err(Error::ModeUnavailable {
                mode,
                reason: format!(
                    "hand-off variables ({} or {MOX_SOCKETS}) are already set: this process \
                     was started by a privileged parent; unset them, or do not force \
                     privileged mode",
                    names.sockets()
                ),
            });
        }
        let mox_format = mode == Mode::Inherited && !ours && mox;
        return Ok(choice(
            mode,
            format!("{mode} mode chosen explicitly"),
            mox_format,
        ));
    }
    Ok(if ours {
        choice(
            Mode::Inherited,
            format!(
                "{} variables are set: taking descriptors from the privileged parent",
                names.prefix()
            ),
            false,
        )
    } else if mox {
        choice(
            Mode::Inherited,
            format!("{MOX_SOCKETS} is set: taking descriptors from mox's privileged parent"),
            true,
        )
    } else if systemd {
        choice(
            Mode::Systemd,
            "LISTEN_FDS is set: taking descriptors from systemd socket activation".into(),
            false,
        )
    } else if euid == 0 {
        choice(
            Mode::Privileged,
            "running as root with nothing passed: binding and opening here, to hand off to \
             an unprivileged child"
                .into(),
            false,
        )
    } else {
        choice(
            Mode::Immediate,
            format!("running as uid {euid} with nothing passed: binding and opening directly"),
            false,
        )
    })
}
