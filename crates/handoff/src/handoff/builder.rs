//! The consuming builder of a [`Handoff`] and the rule that picks its
//! mode.

use crate::env::{Manifest, VarNames, FIRST_PASSED_FD, MOX_SOCKETS};
use crate::environment::{thread_count, Environment, ProcessEnvironment};
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::lineage::UpgradeVars;
use crate::mode::Mode;
use crate::ready::ReadyChannel;
use crate::systemd::{SystemdManifest, LISTEN_FDS, LISTEN_PID};

use super::Handoff;

/// Configures and runs mode detection (a consuming builder).
///
/// ```
/// use lifecycle_handoff::{Handoff, Mode};
///
/// let handoff = Handoff::builder().prefix("GATEWAY").mode(Mode::Immediate).detect().unwrap();
/// assert_eq!(handoff.mode(), Mode::Immediate);
/// assert_eq!(handoff.reason(), "immediate mode chosen explicitly");
/// ```
#[derive(Debug, Clone)]
pub struct HandoffBuilder {
    prefix: String,
    mode: Option<Mode>,
    mox: bool,
}

impl Default for HandoffBuilder {
    fn default() -> Self {
        HandoffBuilder {
            prefix: crate::env::DEFAULT_PREFIX.to_owned(),
            mode: None,
            mox: false,
        }
    }
}

impl HandoffBuilder {
    /// The hand-off variable prefix (default `LIFECYCLE`): variables are
    /// `<PREFIX>_SOCKETS`, `_FILES`, `_FDS`, `_PARENT_PID`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Uses `mode` instead of detecting one (default: detect).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Also accepts mox's `MOX_SOCKETS`/`MOX_FILES` hand-off (default
    /// off), for programs migrating from mox's privileged parent.
    pub fn mox_compat(mut self, accept: bool) -> Self {
        self.mox = accept;
        self
    }

    /// Applies the detection rule to `env` for a process with effective
    /// user id `euid`, without touching any descriptor. The rule, first
    /// match wins:
    ///
    /// 1. a mode set with [`mode`](Self::mode) is used (privileged refuses
    ///    when hand-off variables are present, like mox);
    /// 2. any `<PREFIX>_*` hand-off variable is set → [`Mode::Inherited`];
    /// 3. with [`mox_compat`](Self::mox_compat), `MOX_SOCKETS` is set →
    ///    [`Mode::Inherited`] in mox format;
    /// 4. `LISTEN_FDS` or `LISTEN_PID` is set → [`Mode::Systemd`];
    /// 5. `euid` is 0 → [`Mode::Privileged`];
    /// 6. otherwise → [`Mode::Immediate`].
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use lifecycle_handoff::{Handoff, Mode};
    ///
    /// let mut env = BTreeMap::new();
    /// assert_eq!(Handoff::builder().choose(&env, 0).unwrap().mode, Mode::Privileged);
    /// assert_eq!(Handoff::builder().choose(&env, 1000).unwrap().mode, Mode::Immediate);
    /// env.insert("LISTEN_FDS".into(), "1".into());
    /// assert_eq!(Handoff::builder().choose(&env, 0).unwrap().mode, Mode::Systemd);
    /// ```
    pub fn choose(&self, env: &impl Environment, euid: u32) -> Result<ModeChoice> {
        let names = VarNames::new(&self.prefix)?;
        choose_mode(&names, env, euid, self.mode, self.mox)
    }

    /// Detects the mode from this process's environment and effective user
    /// and, in inherited and systemd modes, takes and validates the passed
    /// descriptors (removing the variables).
    ///
    /// Call it once, at start-up, before other threads exist: it removes
    /// environment variables, and it adopts descriptors 3.. as owned. In
    /// inherited and systemd modes (the ones that remove variables) it
    /// checks that the process has one thread (`Threads:` in
    /// `/proc/self/status`; not checked where `/proc` is missing) and
    /// otherwise refuses with [`Error::ThreadsRunning`], leaving the
    /// environment as it was: call it first thing in `main`, before a
    /// logger thread, an async runtime or a thread pool starts. Privileged
    /// and immediate modes touch no variable and run in any process.
    pub fn detect(self) -> Result<Handoff> {
        let mut env = ProcessEnvironment;
        let euid = nix::unistd::geteuid().as_raw();
        let choice = self.choose(&env, euid)?;
        let names = VarNames::new(&self.prefix)?;
        if matches!(choice.mode, Mode::Inherited | Mode::Systemd) {
            // Taking these hand-offs removes their variables.
            if let Some(threads) = thread_count().filter(|&threads| threads > 1) {
                return Err(Error::ThreadsRunning {
                    threads,
                    mode: choice.mode,
                });
            }
        }
        let mut ready = None;
        let mut lineage = None;
        let inventory = match choice.mode {
            Mode::Privileged | Mode::Immediate => Inventory::default(),
            Mode::Inherited if choice.mox_format => {
                let manifest = Manifest::decode_mox(&mut env)?;
                // SAFETY: the variables were opted into (mox format) and are
                // now removed, so no later call adopts these numbers again; at
                // start-up nothing else in the process owns descriptors 3..,
                // which the parent placed there for us.
                unsafe { crate::validate::adopt_manifest(&manifest, &names, FIRST_PASSED_FD) }?
            }
            Mode::Inherited => {
                // Read (and remove) the upgrade variables first, so they are
                // gone even when the hand-off is refused.
                let upgrade = UpgradeVars::take(&mut env, &names);
                let ppid = nix::unistd::getppid().as_raw();
                let manifest =
                    Manifest::decode(&mut env, &names, u32::try_from(ppid).unwrap_or(0))?;
                let ready_fd = upgrade.ready_fd(&names, manifest.fd_count())?;
                lineage = upgrade.lineage(&names)?;
                // SAFETY: the variables were addressed to this process (parent
                // pid checked) and are now removed, so no later call adopts
                // these numbers again; at start-up nothing else in the process
                // owns descriptors 3.., which the parent placed there for us.
                let inventory =
                    unsafe { crate::validate::adopt_manifest(&manifest, &names, FIRST_PASSED_FD) }?;
                if let Some(fd) = ready_fd {
                    // SAFETY: as above; the ready descriptor is the one right
                    // after the manifest's (checked by `ready_fd`), so it is
                    // not among those just adopted.
                    ready = Some(unsafe { ReadyChannel::adopt(fd, names.ready_fd()) }?);
                }
                inventory
            }
            Mode::Systemd => {
                let pid = std::process::id();
                let manifest = SystemdManifest::decode(&mut env, pid)?;
                // SAFETY: LISTEN_PID names this process and the variables are
                // now removed, so no later call adopts these numbers again;
                // systemd placed them at 3.. for us and nothing else in the
                // process owns them at start-up.
                unsafe { manifest.adopt(crate::systemd::SD_LISTEN_FDS_START) }?
            }
        };
        Ok(Handoff {
            choice,
            names,
            inventory,
            ready,
            lineage,
        })
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
fn choose_mode(
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
