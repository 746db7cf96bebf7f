//! The names of the hand-off variables for a prefix.

use crate::environment::Environment;
use crate::error::{Error, Result};

/// The variable prefix used unless another is configured.
pub const DEFAULT_PREFIX: &str = "LIFECYCLE";

/// The names of the hand-off variables for one prefix.
///
/// ```
/// use lifecycle_handoff::VarNames;
///
/// let names = VarNames::new("GATEWAY").unwrap();
/// assert_eq!(names.sockets(), "GATEWAY_SOCKETS");
/// assert_eq!(names.files(), "GATEWAY_FILES");
/// assert_eq!(names.fds(), "GATEWAY_FDS");
/// assert_eq!(names.parent_pid(), "GATEWAY_PARENT_PID");
/// assert_eq!(names.ready_fd(), "GATEWAY_READY_FD");
/// assert_eq!(names.generation(), "GATEWAY_GENERATION");
/// assert_eq!(names.upgrades_ok(), "GATEWAY_UPGRADES_OK");
/// assert_eq!(names.upgrades_failed(), "GATEWAY_UPGRADES_FAILED");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarNames {
    prefix: String,
    sockets: String,
    files: String,
    fds: String,
    parent_pid: String,
    ready_fd: String,
    generation: String,
    upgrades_ok: String,
    upgrades_failed: String,
}

impl VarNames {
    /// Names for `prefix`, which must be non-empty `A-Z`, `0-9`, `_`.
    pub fn new(prefix: &str) -> Result<Self> {
        let ok = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::BadPrefix {
                prefix: prefix.to_owned(),
            });
        }
        Ok(Self::for_valid_prefix(prefix))
    }

    fn for_valid_prefix(prefix: &str) -> Self {
        VarNames {
            prefix: prefix.to_owned(),
            sockets: format!("{prefix}_SOCKETS"),
            files: format!("{prefix}_FILES"),
            fds: format!("{prefix}_FDS"),
            parent_pid: format!("{prefix}_PARENT_PID"),
            ready_fd: format!("{prefix}_READY_FD"),
            generation: format!("{prefix}_GENERATION"),
            upgrades_ok: format!("{prefix}_UPGRADES_OK"),
            upgrades_failed: format!("{prefix}_UPGRADES_FAILED"),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<PREFIX>_SOCKETS`: the listener entries.
    pub fn sockets(&self) -> &str {
        &self.sockets
    }

    /// `<PREFIX>_FILES`: the file entries.
    pub fn files(&self) -> &str {
        &self.files
    }

    /// `<PREFIX>_FDS`: the number of passed descriptors.
    pub fn fds(&self) -> &str {
        &self.fds
    }

    /// `<PREFIX>_PARENT_PID`: the pid of the process that wrote the variables.
    pub fn parent_pid(&self) -> &str {
        &self.parent_pid
    }

    /// `<PREFIX>_READY_FD`: the descriptor on which the child reports that
    /// it is ready (see [`ReadyChannel`](crate::ReadyChannel)); it is always
    /// the descriptor right after the listeners and files.
    pub fn ready_fd(&self) -> &str {
        &self.ready_fd
    }

    /// `<PREFIX>_GENERATION`: the child's generation (1 for the first
    /// child of a parent, one more per upgrade attempt).
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// `<PREFIX>_UPGRADES_OK`: upgrades that succeeded before this child
    /// was started.
    pub fn upgrades_ok(&self) -> &str {
        &self.upgrades_ok
    }

    /// `<PREFIX>_UPGRADES_FAILED`: upgrades that failed before this child
    /// was started.
    pub fn upgrades_failed(&self) -> &str {
        &self.upgrades_failed
    }

    /// The four upgrade variables: ready fd, generation and both counters
    /// (see [`Lineage`](crate::Lineage)). They are optional: a parent that
    /// does not upgrade sets none of them.
    pub fn upgrade_vars(&self) -> [&str; 4] {
        [
            &self.ready_fd,
            &self.generation,
            &self.upgrades_ok,
            &self.upgrades_failed,
        ]
    }

    /// The four core names: sockets, files, fd count, parent pid.
    pub fn all(&self) -> [&str; 4] {
        [&self.sockets, &self.files, &self.fds, &self.parent_pid]
    }

    /// True when any of the four core variables is set in `env` (the
    /// upgrade variables alone do not make a hand-off).
    pub fn any_present(&self, env: &impl Environment) -> bool {
        self.all().iter().any(|name| env.var(name).is_some())
    }
}

impl Default for VarNames {
    fn default() -> Self {
        // DEFAULT_PREFIX is valid; build directly so this cannot fail.
        Self::for_valid_prefix(DEFAULT_PREFIX)
    }
}
