//! The gateway's TOML configuration: parsing, defaults and validation.
//!
//! Every table denies unknown keys; every error names the file, the line and
//! column, and the key at fault. With no file at all, [`Config::default`]
//! gives an unprivileged development setup: SMTP on `127.0.0.1:2525`, IMAP on
//! `127.0.0.1:1143`, HTTP on `127.0.0.1:9090`, spool in `./spool`.
//!
//! ```
//! use lifecycle_gateway::{Config, Protocol};
//!
//! let config = Config::from_toml(
//!     r#"
//!     spool_dir = "/var/spool/gateway"
//!     [shutdown]
//!     drain_grace = "5s"
//!     [[listener]]
//!     name = "smtp"
//!     protocol = "smtp"
//!     address = "[::1]:2525"
//!     "#,
//!     "gateway.toml",
//! )?;
//! assert_eq!(config.listeners().len(), 1);
//! assert_eq!(config.listeners()[0].protocol(), Protocol::Smtp);
//! assert_eq!(config.shutdown().drain_grace().as_secs(), 5);
//!
//! let err = Config::from_toml("[shutdown]\ndrain = \"5s\"\n", "gateway.toml").unwrap_err();
//! assert!(err.to_string().starts_with("gateway.toml:2:1: unknown field `drain`"));
//! # Ok::<(), lifecycle_gateway::ConfigError>(())
//! ```

mod address;
mod error;
mod limits;
mod raw;
mod types;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_lifecycle::{ProxyProtocol, ProxyVersion, TrustedNetwork};
use lifecycle_handoff::{ListenAddress, ListenerSpec};

pub use error::{ConfigError, Located};
pub use limits::LimitsConfig;
pub use types::{BareNewlines, LogFormat, LogLevel, Protocol, TlsMode};

/// The whole gateway configuration, validated, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    user: Option<String>,
    allow_root: bool,
    spool_dir: PathBuf,
    metrics_prefix: String,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    shutdown: ShutdownConfig,
    log: LogConfig,
    smtp: SmtpConfig,
    imap: ImapConfig,
    tls: Option<TlsConfig>,
    limits: LimitsConfig,
    listeners: Vec<ListenerConfig>,
}

/// `[shutdown]`: how long each shutdown phase may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    lame_duck: Duration,
    drain_grace: Duration,
    abort_grace: Duration,
}

impl ShutdownConfig {
    /// How long the service keeps serving normally after SIGTERM while
    /// `/readyz` already answers 503, so that a load balancer or
    /// Kubernetes stops sending clients before any is refused (default
    /// 0 s: draining starts at once). Set it longer than the balancer's
    /// health check takes to notice (interval × failures).
    pub fn lame_duck(&self) -> Duration {
        self.lame_duck
    }

    /// The longest a stop can take: lame duck + drain grace + abort
    /// grace (a supervisor's stop timeout should be longer).
    pub fn total(&self) -> Duration {
        self.lame_duck + self.drain_grace + self.abort_grace
    }

    /// How long open sessions may finish their work after draining starts
    /// (default 3 s, as mox).
    pub fn drain_grace(&self) -> Duration {
        self.drain_grace
    }

    /// How long aborted connections have to go away (default 1 s).
    pub fn abort_grace(&self) -> Duration {
        self.abort_grace
    }
}

/// `[log]`: log format and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    format: Option<LogFormat>,
    level: LogLevel,
}

impl LogConfig {
    /// The configured format; `None` means "term on a terminal, JSON otherwise".
    pub fn format(&self) -> Option<LogFormat> {
        self.format
    }

    /// The least severe level that is logged (default `info`).
    pub fn level(&self) -> LogLevel {
        self.level
    }
}

/// `[smtp]`: limits of the SMTP sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    hostname: String,
    max_message_size: usize,
    max_recipients: usize,
    idle_timeout: Duration,
    data_deadline: Duration,
    min_data_rate: u64,
    min_data_rate_grace: Duration,
    max_session: Duration,
    bare_newlines: BareNewlines,
}

impl SmtpConfig {
    /// The name in the greeting and EHLO reply (default: the host name).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Largest accepted message in bytes (default 10 MiB).
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Most recipients per message (default 100).
    pub fn max_recipients(&self) -> usize {
        self.max_recipients
    }

    /// How long a session may wait for the client (default 5 min, RFC 5321
    /// §4.5.3.2.7's server timeout).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long a whole DATA transfer may take, from `354` to the final dot
    /// (default 10 min; RFC 5321 §4.5.3.2 gives a client 10 minutes for
    /// the server's answer to the final dot, and 3 minutes per data block).
    pub fn data_deadline(&self) -> Duration {
        self.data_deadline
    }

    /// Minimum average rate of a DATA transfer in bytes per second, checked
    /// after [`min_data_rate_grace`](Self::min_data_rate_grace) (default 500,
    /// Postfix's `smtpd_min_data_rate`; 0 turns the check off).
    pub fn min_data_rate(&self) -> u64 {
        self.min_data_rate
    }

    /// How long after `354` the data rate is first checked (default 30 s).
    pub fn min_data_rate_grace(&self) -> Duration {
        self.min_data_rate_grace
    }

    /// Longest SMTP session, however busy (default 1 h).
    pub fn max_session(&self) -> Duration {
        self.max_session
    }

    /// What a bare LF or bare CR in a message gets (default normalize).
    pub fn bare_newlines(&self) -> BareNewlines {
        self.bare_newlines
    }
}

/// `[imap]`: limits of the IMAP greeting service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapConfig {
    idle_timeout: Duration,
    max_session: Duration,
}

impl ImapConfig {
    /// How long a session may wait for the client (default 30 min, RFC 9051's
    /// autologout minimum).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Longest IMAP session, however busy (default 24 h).
    pub fn max_session(&self) -> Duration {
        self.max_session
    }
}

/// `[tls]`: certificate chain and private key, opened with the privileges of
/// the start (they may be readable by root only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsConfig {
    /// PEM certificate chain.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// PEM private key.
    pub fn key(&self) -> &Path {
        &self.key
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    name: String,
    protocol: Protocol,
    address: ListenAddress,
    backlog: Option<u32>,
    tls: Option<TlsMode>,
    max_connections: Option<u32>,
    proxy_protocol: Option<ProxyVersion>,
    trusted_proxies: Vec<TrustedNetwork>,
}

impl ListenerConfig {
    /// The PROXY protocol this listener expects from its trusted proxies
    /// (`proxy_protocol` and `trusted_proxies`), if any.
    pub fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        let version = self.proxy_protocol?;
        Some(
            self.trusted_proxies
                .iter()
                .fold(ProxyProtocol::new(version), |p, n| p.trust(*n)),
        )
    }

    /// This listener's own `max_connections`, if it sets one (else
    /// `[limits]`'s applies; 0: no limit).
    pub fn max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The listener's stable name (hand-off key, metrics label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the listener serves.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Where it listens.
    pub fn address(&self) -> &ListenAddress {
        &self.address
    }

    /// The configured listen backlog, if any.
    pub fn backlog(&self) -> Option<u32> {
        self.backlog
    }

    /// TLS mode, if any.
    pub fn tls(&self) -> Option<TlsMode> {
        self.tls
    }

    /// The hand-off spec for this listener.
    pub fn spec(&self) -> ListenerSpec {
        let spec = ListenerSpec::new(self.name.clone(), self.address.clone());
        match self.backlog {
            Some(b) => spec.with_backlog(b),
            None => spec,
        }
    }
}

/// The service user of the built-in configuration (no `--config`) when the
/// gateway is started as root.
pub const DEFAULT_USER: &str = "nobody";

impl Default for Config {
    /// The configuration used without `--config`: SMTP on `127.0.0.1:2525`,
    /// IMAP on `127.0.0.1:1143`, HTTP on `127.0.0.1:9090`, spool `./spool`,
    /// drain grace 3 s, abort grace 1 s, and — only when started as root —
    /// the service runs as [`DEFAULT_USER`] so that the README's first
    /// command works for root too. A configuration file names its own
    /// `user` (none by default: root is then refused unless `allow_root`).
    fn default() -> Self {
        Config {
            user: Some(DEFAULT_USER.to_owned()),
            allow_root: false,
            spool_dir: PathBuf::from(validate::DEFAULT_SPOOL),
            metrics_prefix: validate::DEFAULT_PREFIX.to_owned(),
            control_socket: None,
            control_group: None,
            shutdown: ShutdownConfig {
                lame_duck: validate::DEFAULT_LAME_DUCK,
                drain_grace: validate::DEFAULT_DRAIN,
                abort_grace: validate::DEFAULT_ABORT,
            },
            log: LogConfig {
                format: None,
                level: LogLevel::Info,
            },
            smtp: SmtpConfig {
                hostname: validate::default_hostname(),
                max_message_size: validate::DEFAULT_MAX_MESSAGE,
                max_recipients: validate::DEFAULT_MAX_RCPT,
                idle_timeout: validate::DEFAULT_SMTP_IDLE,
                data_deadline: validate::DEFAULT_DATA_DEADLINE,
                min_data_rate: validate::DEFAULT_MIN_DATA_RATE,
                min_data_rate_grace: validate::DEFAULT_MIN_DATA_RATE_GRACE,
                max_session: validate::DEFAULT_SMTP_MAX_SESSION,
                bare_newlines: BareNewlines::Normalize,
            },
            imap: ImapConfig {
                idle_timeout: validate::DEFAULT_IMAP_IDLE,
                max_session: validate::DEFAULT_IMAP_MAX_SESSION,
            },
            tls: None,
            limits: LimitsConfig::default(),
            listeners: validate::default_listeners(),
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        validate::build(raw, origin, text)
    }

    /// The effective configuration as TOML (`--print-config`); it parses
    /// back to an equal `Config`.
    pub fn to_toml(&self) -> String {
        let out = raw::OutConfig {
            user: self.user.clone(),
            allow_root: self.allow_root,
            spool_dir: self.spool_dir.display().to_string(),
            metrics_prefix: self.metrics_prefix.clone(),
            control_socket: self
                .control_socket
                .as_ref()
                .map(|p| p.display().to_string()),
            control_group: self.control_group.clone(),
            shutdown: raw::OutShutdown {
                lame_duck: humantime::format_duration(self.shutdown.lame_duck).to_string(),
                drain_grace: humantime::format_duration(self.shutdown.drain_grace).to_string(),
                abort_grace: humantime::format_duration(self.shutdown.abort_grace).to_string(),
            },
            log: raw::OutLog {
                format: self.log.format,
                level: self.log.level,
            },
            smtp: raw::OutSmtp {
                hostname: self.smtp.hostname.clone(),
                max_message_size: self.smtp.max_message_size as u64,
                max_recipients: self.smtp.max_recipients as u64,
                idle_timeout: humantime::format_duration(self.smtp.idle_timeout).to_string(),
                data_deadline: humantime::format_duration(self.smtp.data_deadline).to_string(),
                min_data_rate: self.smtp.min_data_rate,
                min_data_rate_grace: humantime::format_duration(self.smtp.min_data_rate_grace)
                    .to_string(),
                max_session: humantime::format_duration(self.smtp.max_session).to_string(),
                bare_newlines: self.smtp.bare_newlines,
            },
            imap: raw::OutImap {
                idle_timeout: humantime::format_duration(self.imap.idle_timeout).to_string(),
                max_session: humantime::format_duration(self.imap.max_session).to_string(),
            },
            tls: self.tls.as_ref().map(|t| raw::OutTls {
                cert: t.cert.display().to_string(),
                key: t.key.display().to_string(),
            }),
            limits: (&self.limits).into(),
            listener: self
                .listeners
                .iter()
                .map(|l| raw::OutListener {
                    name: l.name.clone(),
                    protocol: l.protocol,
                    address: l.address.to_string(),
                    backlog: l.backlog,
                    tls: l.tls,
                    max_connections: l.max_connections,
                    proxy_protocol: l.proxy_protocol.map(|v| v.to_string()),
                    trusted_proxies: l.trusted_proxies.iter().map(|n| n.to_string()).collect(),
                })
                .collect(),
        };
        toml::to_string(&out).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    /// The user the service runs as when started as root.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the service may run as root (default false).
    pub fn allow_root(&self) -> bool {
        self.allow_root
    }

    /// The operator's control socket (`lifecycle-gateway ctl`): none by
    /// default; the packaged configuration sets
    /// `/run/lifecycle-gateway/control.sock`.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// The group whose members may use the control socket besides root
    /// (socket mode 0660 then; 0600 without it).
    pub fn control_group(&self) -> Option<&str> {
        self.control_group.as_deref()
    }

    /// Where accepted messages are stored (default `./spool`, relative to the
    /// working directory).
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// Prefix of every metric name (default `lifecycle`).
    pub fn metrics_prefix(&self) -> &str {
        &self.metrics_prefix
    }

    /// `[shutdown]`.
    pub fn shutdown(&self) -> &ShutdownConfig {
        &self.shutdown
    }

    /// `[log]`.
    pub fn log(&self) -> &LogConfig {
        &self.log
    }

    /// `[smtp]`.
    pub fn smtp(&self) -> &SmtpConfig {
        &self.smtp
    }

    /// `[imap]`.
    pub fn imap(&self) -> &ImapConfig {
        &self.imap
    }

    /// `[tls]`, if configured.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// `[limits]`: connection admission of every listener.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// The admission limits of `listener`: `[limits]`, with the listener's
    /// own `max_connections` if it sets one; an HTTP listener without the
    /// rate (probes open a connection each).
    pub fn listener_limits(&self, listener: &ListenerConfig) -> actix_lifecycle::Limits {
        let rate = listener.protocol() != Protocol::Http;
        self.limits.for_listener(listener.max_connections, rate)
    }

    /// Every `[[listener]]`, in file order.
    pub fn listeners(&self) -> &[ListenerConfig] {
        &self.listeners
    }

    /// The hand-off specs of every listener, in file order.
    pub fn listener_specs(&self) -> Vec<ListenerSpec> {
        self.listeners.iter().map(ListenerConfig::spec).collect()
    }
}

#[cfg(test)]
mod tests;
