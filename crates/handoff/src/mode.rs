//! The four modes (the rule that picks one is `HandoffBuilder::choose`).

use std::fmt;

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
