//! From the raw file to a checked [`Config`]: defaults, value checks and
//! cross-listener checks (duplicate names and addresses, TLS use).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix_lifecycle::{ProxyVersion, TrustedNetwork};
use lifecycle_handoff::ListenAddress;
use toml::Spanned;

use super::address::parse_address;
use super::raw::{RawConfig, RawListener};
use super::{
    Config, ConfigError, ImapConfig, ListenerConfig, LogConfig, LogLevel, Protocol, ShutdownConfig,
    SmtpConfig, TlsConfig, TlsMode,
};

pub(super) const DEFAULT_SPOOL: &str = "spool";
pub(super) const DEFAULT_PREFIX: &str = "lifecycle";
pub(super) const DEFAULT_LAME_DUCK: Duration = Duration::ZERO;
pub(super) const DEFAULT_DRAIN: Duration = Duration::from_secs(3);
pub(super) const DEFAULT_ABORT: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_MAX_MESSAGE: usize = 10 * 1024 * 1024;
pub(super) const DEFAULT_MAX_RCPT: usize = 100;
pub(super) const DEFAULT_SMTP_IDLE: Duration = Duration::from_secs(300);
pub(super) const DEFAULT_IMAP_IDLE: Duration = Duration::from_secs(1800);
pub(super) const DEFAULT_DATA_DEADLINE: Duration = Duration::from_secs(600);
pub(super) const DEFAULT_MIN_DATA_RATE: u64 = 500;
pub(super) const DEFAULT_MIN_DATA_RATE_GRACE: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SMTP_MAX_SESSION: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_IMAP_MAX_SESSION: Duration = Duration::from_secs(24 * 3600);
/// Messages stream to the spool, but a spool file should stay sane.
const MAX_MESSAGE_LIMIT: i64 = 1 << 30;
/// A rate above 1 GB/s would cut every real client.
const MAX_DATA_RATE: i64 = 1_000_000_000;
const MAX_RCPT_LIMIT: i64 = 100_000;
const MAX_NAME_LEN: usize = 64;

/// The three listeners used without a config file.
pub(super) fn default_listeners() -> Vec<ListenerConfig> {
    let local = |port: u16| ListenAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    [
        ("smtp", Protocol::Smtp, 2525),
        ("imap", Protocol::Imap, 1143),
        ("http", Protocol::Http, 9090),
    ]
    .into_iter()
    .map(|(name, protocol, port)| ListenerConfig {
        name: name.to_owned(),
        protocol,
        address: local(port),
        backlog: None,
        tls: None,
        max_connections: None,
        proxy_protocol: None,
        trusted_proxies: Vec::new(),
    })
    .collect()
}

/// This machine's host name, or `localhost`.
pub(super) fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| valid_hostname(s))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
}

struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.origin, self.text, spanned.span(), message)
    }

    fn line_of<T>(&self, spanned: &Spanned<T>) -> usize {
        let end = spanned.span().start.min(self.text.len());
        self.text.get(..end).map_or(0, |s| s.matches('\n').count()) + 1
    }
}

pub(super) fn build(raw: RawConfig, origin: &str, text: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { origin, text };
    let defaults = Config::default();

    let user = match raw.user {
        Some(u) if u.get_ref().trim().is_empty() => {
            return Err(cx.err(&u, "`user` is empty; name a user (such as \"mail\") or a numeric uid, or remove the line"));
        }
        Some(u) => Some(u.into_inner()),
        None => None,
    };

    let spool_dir = match raw.spool_dir {
        Some(d) if d.get_ref().is_empty() => {
            return Err(cx.err(
                &d,
                "`spool_dir` is empty; name a directory such as \"/var/spool/gateway\"",
            ));
        }
        Some(d) => PathBuf::from(d.into_inner()),
        None => defaults.spool_dir.clone(),
    };

    let control_socket = match raw.control_socket {
        Some(p) if !p.get_ref().starts_with('/') => {
            return Err(cx.err(
                &p,
                "`control_socket` must be an absolute path, such as \"/run/lifecycle-gateway/control.sock\"",
            ));
        }
        Some(p) => Some(PathBuf::from(p.into_inner())),
        None => None,
    };
    let control_group = match raw.control_group {
        Some(g) if g.get_ref().is_empty() => {
            return Err(cx.err(
                &g,
                "`control_group` is empty; name a group, or remove the key",
            ));
        }
        Some(g) if control_socket.is_none() => {
            return Err(cx.err(
                &g,
                "`control_group` without `control_socket`; set control_socket too, or remove control_group",
            ));
        }
        Some(g) => Some(g.into_inner()),
        None => None,
    };

    let metrics_prefix = match raw.metrics_prefix {
        Some(p) if !valid_metric_prefix(p.get_ref()) => {
            return Err(cx.err(
                &p,
                format!(
                    "`metrics_prefix` {:?} is not a valid Prometheus metric name prefix; use letters, digits and `_`, not starting with a digit (such as \"lifecycle\")",
                    p.get_ref()
                ),
            ));
        }
        Some(p) => p.into_inner(),
        None => defaults.metrics_prefix.clone(),
    };

    let shutdown = ShutdownConfig {
        lame_duck: raw.shutdown.lame_duck.map_or(DEFAULT_LAME_DUCK, |d| d.0),
        drain_grace: raw.shutdown.drain_grace.map_or(DEFAULT_DRAIN, |d| d.0),
        abort_grace: raw.shutdown.abort_grace.map_or(DEFAULT_ABORT, |d| d.0),
    };

    let log = LogConfig {
        format: raw.log.format,
        level: raw.log.level.unwrap_or(LogLevel::Info),
    };

    let hostname = match raw.smtp.hostname {
        Some(h) if !valid_hostname(h.get_ref()) => {
            return Err(cx.err(&h, format!("`hostname` {:?} is not a host name; use letters, digits, `.` and `-` (such as \"mx.example.org\")", h.get_ref())));
        }
        Some(h) => h.into_inner(),
        None => defaults.smtp.hostname.clone(),
    };
    let max_message_size = match raw.smtp.max_message_size {
        Some(n) if !(1..=MAX_MESSAGE_LIMIT).contains(n.get_ref()) => {
            return Err(cx.err(
                &n,
                format!("`max_message_size` must be from 1 to {MAX_MESSAGE_LIMIT} bytes"),
            ));
        }
        Some(n) => to_usize(*n.get_ref()),
        None => DEFAULT_MAX_MESSAGE,
    };
    let max_recipients = match raw.smtp.max_recipients {
        Some(n) if !(1..=MAX_RCPT_LIMIT).contains(n.get_ref()) => {
            return Err(cx.err(
                &n,
                format!("`max_recipients` must be from 1 to {MAX_RCPT_LIMIT}"),
            ));
        }
        Some(n) => to_usize(*n.get_ref()),
        None => DEFAULT_MAX_RCPT,
    };
    let smtp_idle = positive(
        &cx,
        "idle_timeout",
        raw.smtp.idle_timeout,
        DEFAULT_SMTP_IDLE,
    )?;
    let imap_idle = positive(
        &cx,
        "idle_timeout",
        raw.imap.idle_timeout,
        DEFAULT_IMAP_IDLE,
    )?;
    let data_deadline = positive(
        &cx,
        "data_deadline",
        raw.smtp.data_deadline,
        DEFAULT_DATA_DEADLINE,
    )?;
    let min_data_rate = match raw.smtp.min_data_rate {
        Some(n) if !(0..=MAX_DATA_RATE).contains(n.get_ref()) => {
            return Err(cx.err(&n, format!("`min_data_rate` must be from 0 (no minimum) to {MAX_DATA_RATE} bytes per second, such as 500")));
        }
        Some(n) => u64::try_from(*n.get_ref()).unwrap_or(0),
        None => DEFAULT_MIN_DATA_RATE,
    };
    let min_data_rate_grace = positive(
        &cx,
        "min_data_rate_grace",
        raw.smtp.min_data_rate_grace,
        DEFAULT_MIN_DATA_RATE_GRACE,
    )?;
    let smtp_max_session = positive(
        &cx,
        "max_session",
        raw.smtp.max_session,
        DEFAULT_SMTP_MAX_SESSION,
    )?;
    let imap_max_session = positive(
        &cx,
        "max_session",
        raw.imap.max_session,
        DEFAULT_IMAP_MAX_SESSION,
    )?;

    let tls = match raw.tls {
        Some(t) => {
            let t = t.into_inner();
            for (field, value) in [("cert", &t.cert), ("key", &t.key)] {
                if value.get_ref().is_empty() {
                    return Err(cx.err(value, format!("`tls.{field}` is empty; name a PEM file")));
                }
            }
            Some(TlsConfig {
                cert: PathBuf::from(t.cert.into_inner()),
                key: PathBuf::from(t.key.into_inner()),
            })
        }
        None => None,
    };

    let limits = super::limits::build(raw.limits, |v, m| cx.err(v, m), |v, m| cx.err(v, m))?;

    let listeners = match raw.listeners {
        None => defaults.listeners.clone(),
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.err(&list, "no listeners: add at least one [[listener]] table, or remove `listener` to use the defaults"));
            }
            listeners(&cx, list.into_inner(), tls.is_some())?
        }
    };

    Ok(Config {
        user,
        allow_root: raw.allow_root,
        spool_dir,
        metrics_prefix,
        control_socket,
        control_group,
        shutdown,
        log,
        smtp: SmtpConfig {
            hostname,
            max_message_size,
            max_recipients,
            idle_timeout: smtp_idle,
            data_deadline,
            min_data_rate,
            min_data_rate_grace,
            max_session: smtp_max_session,
            bare_newlines: raw.smtp.bare_newlines.unwrap_or_default(),
        },
        imap: ImapConfig {
            idle_timeout: imap_idle,
            max_session: imap_max_session,
        },
        tls,
        limits,
        listeners,
    })
}

fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn positive(
    cx: &Ctx<'_>,
    key: &str,
    value: Option<Spanned<super::raw::HumanDuration>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(d) if d.get_ref().0.is_zero() => Err(cx.err(
            &d,
            format!(
                "`{key}` must be longer than zero, such as \"{}\"",
                humantime::format_duration(default)
            ),
        )),
        Some(d) => Ok(d.get_ref().0),
        None => Ok(default),
    }
}

fn valid_metric_prefix(p: &str) -> bool {
    let mut chars = p.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn listeners(
    cx: &Ctx<'_>,
    raw: Vec<RawListener>,
    have_tls: bool,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<ListenAddress, (usize, String)> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for l in raw {
        let name = l.name.get_ref();
        if name.is_empty() {
            return Err(cx.err(
                &l.name,
                "listener `name` is empty; give each listener a unique name such as \"smtp\"",
            ));
        }
        if !valid_name(name) {
            return Err(cx.err(&l.name, format!("listener name {name:?} may only hold letters, digits, `_`, `-` and `.` (at most {MAX_NAME_LEN}): it is used as a metric label and a systemd FileDescriptorName")));
        }
        if let Some(line) = names.get(name) {
            return Err(cx.err(&l.name, format!("listener name `{name}` is already used by the listener on line {line}; names must be unique")));
        }
        names.insert(name.clone(), cx.line_of(&l.name));

        let address = parse_address(l.address.get_ref()).map_err(|m| cx.err(&l.address, m))?;
        let wildcard_port = matches!(&address, ListenAddress::Tcp(a) if a.port() == 0);
        if !wildcard_port {
            if let Some((line, other)) = addresses.get(&address) {
                return Err(cx.err(&l.address, format!("address `{address}` is already used by listener `{other}` on line {line}; each listener needs its own address")));
            }
            addresses.insert(address.clone(), (cx.line_of(&l.address), name.clone()));
        }

        let backlog = match &l.backlog {
            Some(b) if !(1..=i64::from(i32::MAX)).contains(b.get_ref()) => {
                return Err(cx.err(b, "`backlog` must be a positive number (the kernel caps it at net.core.somaxconn)"));
            }
            Some(b) => u32::try_from(*b.get_ref()).ok(),
            None => None,
        };

        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let mode = *t.get_ref();
                match (l.protocol, mode) {
                    (Protocol::Http, _) => {
                        return Err(cx.err(t, "`tls` is not supported on http listeners; serve /metrics on a local address or behind a proxy"));
                    }
                    (Protocol::Imap, TlsMode::Starttls) => {
                        return Err(cx.err(t, "`tls = \"starttls\"` is only for smtp listeners; use `tls = \"implicit\"` for IMAPS"));
                    }
                    _ => {}
                }
                if !have_tls {
                    return Err(cx.err(t, "this listener uses TLS but there is no [tls] table; add [tls] with `cert` and `key` paths"));
                }
                Some(mode)
            }
        };

        let max_connections = match &l.max_connections {
            Some(v) => Some(super::limits::count(
                &|v, m| cx.err(v, m),
                "max_connections",
                v,
            )?),
            None => None,
        };

        let proxy_protocol = match &l.proxy_protocol {
            Some(v) if l.protocol == Protocol::Http => {
                return Err(cx.err(v, "`proxy_protocol` is not supported on http listeners (HTTP is served by actix-web); remove it and reach /metrics and /readyz directly"));
            }
            Some(v) => match v.get_ref().parse::<ProxyVersion>() {
                Ok(version) => Some(version),
                Err(e) => return Err(cx.err(v, format!("`proxy_protocol`: {e}"))),
            },
            None => None,
        };
        let mut trusted_proxies = Vec::new();
        match (&l.trusted_proxies, &l.proxy_protocol) {
            (Some(list), None) => {
                return Err(cx.err(list, "`trusted_proxies` without `proxy_protocol`: add `proxy_protocol = \"v2\"` (or \"v1\", \"any\"), or remove `trusted_proxies`"));
            }
            (None, Some(v)) => {
                return Err(cx.err(v, "`proxy_protocol` needs `trusted_proxies`: list the load balancers' addresses, such as `trusted_proxies = [\"10.0.0.0/8\"]`; a connection from any other address is closed"));
            }
            (Some(list), Some(v)) => {
                if list.get_ref().is_empty() {
                    return Err(cx.err(v, "`trusted_proxies` is empty: list the load balancers' addresses, such as `trusted_proxies = [\"10.0.0.0/8\"]`"));
                }
                for n in list.get_ref() {
                    match n.get_ref().parse::<TrustedNetwork>() {
                        Ok(net) => trusted_proxies.push(net),
                        Err(e) => return Err(cx.err(n, format!("`trusted_proxies`: {e}"))),
                    }
                }
            }
            (None, None) => {}
        }

        out.push(ListenerConfig {
            name: l.name.into_inner(),
            protocol: l.protocol,
            address,
            backlog,
            tls,
            max_connections,
            proxy_protocol,
            trusted_proxies,
        });
    }
    Ok(out)
}
