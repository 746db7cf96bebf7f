//! The configuration file as serde sees it: every table denies unknown keys,
//! and values that later checks may reject keep their span.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use super::{BareNewlines, LogFormat, LogLevel, Protocol, TlsMode};

/// A human duration such as `"3s"`, `"500ms"` or `"1m 30s"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}` ({e}); write a number with a unit, such as \"3s\", \"500ms\" or \"1m\""
            ))
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) user: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow_root: bool,
    pub(crate) spool_dir: Option<Spanned<String>>,
    pub(crate) metrics_prefix: Option<Spanned<String>>,
    pub(crate) control_socket: Option<Spanned<String>>,
    pub(crate) control_group: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) shutdown: RawShutdown,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) smtp: RawSmtp,
    #[serde(default)]
    pub(crate) imap: RawImap,
    pub(crate) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(crate) limits: super::limits::RawLimits,
    #[serde(rename = "listener")]
    pub(crate) listeners: Option<Spanned<Vec<RawListener>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShutdown {
    pub(crate) lame_duck: Option<HumanDuration>,
    pub(crate) drain_grace: Option<HumanDuration>,
    pub(crate) abort_grace: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<LogFormat>,
    pub(crate) level: Option<LogLevel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtp {
    pub(crate) hostname: Option<Spanned<String>>,
    pub(crate) max_message_size: Option<Spanned<i64>>,
    pub(crate) max_recipients: Option<Spanned<i64>>,
    pub(crate) idle_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) data_deadline: Option<Spanned<HumanDuration>>,
    pub(crate) min_data_rate: Option<Spanned<i64>>,
    pub(crate) min_data_rate_grace: Option<Spanned<HumanDuration>>,
    pub(crate) max_session: Option<Spanned<HumanDuration>>,
    pub(crate) bare_newlines: Option<BareNewlines>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImap {
    pub(crate) idle_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) max_session: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    pub(crate) protocol: Protocol,
    pub(crate) address: Spanned<String>,
    pub(crate) backlog: Option<Spanned<i64>>,
    pub(crate) tls: Option<Spanned<TlsMode>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) proxy_protocol: Option<Spanned<String>>,
    pub(crate) trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

// What `--print-config` writes: the effective configuration, every default
// filled in, in a form that parses back to the same configuration.

#[derive(Debug, Serialize)]
pub(crate) struct OutConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    pub(crate) allow_root: bool,
    pub(crate) spool_dir: String,
    pub(crate) metrics_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) control_socket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) control_group: Option<String>,
    pub(crate) shutdown: OutShutdown,
    pub(crate) log: OutLog,
    pub(crate) smtp: OutSmtp,
    pub(crate) imap: OutImap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<OutTls>,
    pub(crate) limits: super::limits::OutLimits,
    pub(crate) listener: Vec<OutListener>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutShutdown {
    pub(crate) lame_duck: String,
    pub(crate) drain_grace: String,
    pub(crate) abort_grace: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) format: Option<LogFormat>,
    pub(crate) level: LogLevel,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutSmtp {
    pub(crate) hostname: String,
    pub(crate) max_message_size: u64,
    pub(crate) max_recipients: u64,
    pub(crate) idle_timeout: String,
    pub(crate) data_deadline: String,
    pub(crate) min_data_rate: u64,
    pub(crate) min_data_rate_grace: String,
    pub(crate) max_session: String,
    pub(crate) bare_newlines: BareNewlines,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutImap {
    pub(crate) idle_timeout: String,
    pub(crate) max_session: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutTls {
    pub(crate) cert: String,
    pub(crate) key: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutListener {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<TlsMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) proxy_protocol: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) trusted_proxies: Vec<String>,
}
