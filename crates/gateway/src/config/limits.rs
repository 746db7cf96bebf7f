//! `[limits]`: admission control of every listener (SMTP, IMAP, HTTP).
//!
//! The defaults are those of a public MX on one address, after Postfix's
//! anvil (`smtpd_client_connection_count_limit = 50`, a per-client count
//! over all of smtpd's processes) and mox (a per-IP connection limit in
//! front of every listener):
//!
//! * `max_connections = 2000` per listener: far above what a healthy MX
//!   sees at once, far below what exhausts the process (each connection
//!   is a descriptor and a session), so a flood is refused with 421 and
//!   the service stays up for the others.
//! * `max_per_address = 20` per client network: a legitimate sending MTA
//!   opens a handful of parallel connections to one MX (Postfix's
//!   `default_destination_concurrency_limit` is 20), so 20 refuses
//!   nobody who behaves, while one address can no longer take the whole
//!   listener.
//! * `address_prefix_v4 = 32`, `address_prefix_v6 = 64`: one IPv4 host;
//!   one IPv6 site (a /64 is the smallest network handed out, and a client
//!   owns every address in it).
//! * no `rate_per_address`: retries of a legitimate queue come in bursts
//!   after an outage; set one (such as `"60/min"`) when a client opening
//!   and closing connections in a loop is a problem.
//!
//! `0` turns a count limit off. A refused client gets one busy line
//! (SMTP `421 4.7.0`, IMAP `* BYE`) and is disconnected; it retries later,
//! as SMTP clients do after a 4xx. An HTTP listener takes the counts (a
//! refused connection's requests get `503` with `Retry-After`) but not the
//! rate: health checks and scrapes open a connection per probe by design,
//! and a rate set for mail clients would fail them.

use actix_lifecycle::{Limits, Rate};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;

pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 2000;
pub(super) const DEFAULT_MAX_PER_ADDRESS: u32 = 20;

/// `[limits]`: connection admission, checked before a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    max_connections: u32,
    max_per_address: u32,
    address_prefix_v4: u8,
    address_prefix_v6: u8,
    rate_per_address: Option<Rate>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
            address_prefix_v4: actix_lifecycle::MAX_PREFIX_V4,
            address_prefix_v6: actix_lifecycle::MAX_PREFIX_V6,
            rate_per_address: None,
        }
    }
}

impl LimitsConfig {
    /// Live connections per listener (default 2000; 0: no limit). A
    /// `[[listener]]` may set its own `max_connections`.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Live connections per client network and listener (default 20; 0:
    /// no limit).
    pub fn max_per_address(&self) -> u32 {
        self.max_per_address
    }

    /// Prefix length of an IPv4 client network (default 32).
    pub fn address_prefix_v4(&self) -> u8 {
        self.address_prefix_v4
    }

    /// Prefix length of an IPv6 client network (default 64).
    pub fn address_prefix_v6(&self) -> u8 {
        self.address_prefix_v6
    }

    /// New connections per client network and listener (default: no limit).
    pub fn rate_per_address(&self) -> Option<Rate> {
        self.rate_per_address
    }

    /// The admission limits of a listener, with its own `max_connections`
    /// if it sets one. An HTTP listener takes no rate (see the module).
    pub fn for_listener(&self, max_connections: Option<u32>, rate: bool) -> Limits {
        let mut limits = Limits::none();
        match max_connections.unwrap_or(self.max_connections) {
            0 => {}
            n => limits = limits.max_connections(n),
        }
        if self.max_per_address != 0 {
            limits = limits.max_per_address(self.max_per_address);
        }
        if let (true, Some(rate)) = (rate, self.rate_per_address) {
            limits = limits.rate_per_address(rate);
        }
        // The prefixes were checked when the configuration was read.
        limits
            .address_prefix(self.address_prefix_v4, self.address_prefix_v6)
            .unwrap_or(limits)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_per_address: Option<Spanned<i64>>,
    pub(crate) address_prefix_v4: Option<Spanned<i64>>,
    pub(crate) address_prefix_v6: Option<Spanned<i64>>,
    pub(crate) rate_per_address: Option<Spanned<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutLimits {
    max_connections: u32,
    max_per_address: u32,
    address_prefix_v4: u8,
    address_prefix_v6: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_address: Option<String>,
}

impl From<&LimitsConfig> for OutLimits {
    fn from(l: &LimitsConfig) -> Self {
        OutLimits {
            max_connections: l.max_connections,
            max_per_address: l.max_per_address,
            address_prefix_v4: l.address_prefix_v4,
            address_prefix_v6: l.address_prefix_v6,
            rate_per_address: l.rate_per_address.map(|r| r.to_string()),
        }
    }
}

/// A connection count: 0 (no limit) to 4294967295.
pub(super) fn count(
    err: &impl Fn(&Spanned<i64>, String) -> ConfigError,
    key: &str,
    value: &Spanned<i64>,
) -> Result<u32, ConfigError> {
    u32::try_from(*value.get_ref()).map_err(|_| {
        err(
            value,
            format!("`{key}` must be a number of connections from 0 (no limit) to 4294967295"),
        )
    })
}

/// Checks `[limits]`; `err` locates an error at a value.
pub(super) fn build(
    raw: RawLimits,
    err: impl Fn(&Spanned<i64>, String) -> ConfigError,
    err_text: impl Fn(&Spanned<String>, String) -> ConfigError,
) -> Result<LimitsConfig, ConfigError> {
    let d = LimitsConfig::default();
    let max_connections = match &raw.max_connections {
        Some(v) => count(&err, "max_connections", v)?,
        None => d.max_connections,
    };
    let max_per_address = match &raw.max_per_address {
        Some(v) => count(&err, "max_per_address", v)?,
        None => d.max_per_address,
    };
    let prefix = |value: &Option<Spanned<i64>>, key: &str, max: u8, default: u8| match value {
        Some(v) => u8::try_from(*v.get_ref())
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| {
                err(
                    v,
                    format!(
                        "`{key}` must be a prefix length from 0 to {max} (a longer IPv6 prefix \
                         would let one client rotate through its /64)"
                    ),
                )
            }),
        None => Ok(default),
    };
    let address_prefix_v4 = prefix(
        &raw.address_prefix_v4,
        "address_prefix_v4",
        actix_lifecycle::MAX_PREFIX_V4,
        d.address_prefix_v4,
    )?;
    let address_prefix_v6 = prefix(
        &raw.address_prefix_v6,
        "address_prefix_v6",
        actix_lifecycle::MAX_PREFIX_V6,
        d.address_prefix_v6,
    )?;
    let rate_per_address = match &raw.rate_per_address {
        Some(text) => Some(
            text.get_ref()
                .parse::<Rate>()
                .map_err(|e| err_text(text, format!("`rate_per_address`: {e}")))?,
        ),
        None => None,
    };
    Ok(LimitsConfig {
        max_connections,
        max_per_address,
        address_prefix_v4,
        address_prefix_v6,
        rate_per_address,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use actix_lifecycle::Limits;

    #[test]
    fn defaults_are_those_of_a_public_mx() {
        let c = Config::from_toml("", "g.toml").unwrap();
        let l = c.limits();
        assert_eq!((l.max_connections(), l.max_per_address()), (2000, 20));
        assert_eq!((l.address_prefix_v4(), l.address_prefix_v6()), (32, 64));
        assert_eq!(l.rate_per_address(), None);
        assert_eq!(
            c.listener_limits(&c.listeners()[0]),
            Limits::none().max_connections(2000).max_per_address(20)
        );
        assert_eq!(Config::default().limits(), c.limits());
    }

    #[test]
    fn limits_parse_print_back_and_a_listener_may_set_its_own() {
        let text = r#"
[limits]
max_connections = 500
max_per_address = 0
address_prefix_v4 = 24
address_prefix_v6 = 48
rate_per_address = "60/min"
[[listener]]
name = "mx"
protocol = "smtp"
address = "127.0.0.1:25"
max_connections = 0
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:143"
"#;
        let c = Config::from_toml(text, "g.toml").unwrap();
        let mx = c.listener_limits(&c.listeners()[0]);
        let imap = c.listener_limits(&c.listeners()[1]);
        assert_eq!(mx.get_max_connections(), None, "0: no limit");
        assert_eq!(imap.get_max_connections(), Some(500));
        assert_eq!(imap.get_max_per_address(), None);
        assert_eq!(imap.get_address_prefix(), (24, 48));
        assert_eq!(
            imap.get_rate_per_address().map(|r| r.to_string()),
            Some("60/min".into())
        );
        let printed = c.to_toml();
        assert!(printed.contains("[limits]"), "{printed}");
        assert_eq!(Config::from_toml(&printed, "printed").unwrap(), c);
    }

    #[test]
    fn bad_limits_name_the_line_and_the_fix() {
        let cases = [
            ("[limits]\nmax_connections = -1\n", 2, "from 0 (no limit)"),
            (
                "[limits]\nmax_per_address = 5000000000\n",
                2,
                "from 0 (no limit)",
            ),
            ("[limits]\naddress_prefix_v4 = 33\n", 2, "from 0 to 32"),
            ("[limits]\naddress_prefix_v6 = 96\n", 2, "from 0 to 64"),
            ("[limits]\nrate_per_address = \"60\"\n", 2, "\"60/min\""),
            ("[limits]\nrate_per_address = \"0/min\"\n", 2, "count"),
            ("[limits]\nmax_conn = 5\n", 2, "unknown field `max_conn`"),
        ];
        for (text, line, needle) in cases {
            let e = Config::from_toml(text, "g.toml").unwrap_err();
            assert_eq!(e.line(), Some(line), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn an_http_listener_has_limits_too() {
        let text = "[[listener]]\nname = \"h\"\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\nmax_connections = 5\n";
        let c = Config::from_toml(text, "g.toml").unwrap();
        let limits = c.listener_limits(&c.listeners()[0]);
        assert_eq!(limits.get_max_connections(), Some(5));
        assert_eq!(limits.get_max_per_address(), Some(20));
        // A rate for mail clients is not applied to HTTP probes.
        let text = format!("[limits]\nrate_per_address = \"10/min\"\n{text}[[listener]]\nname = \"s\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n");
        let c = Config::from_toml(&text, "g.toml").unwrap();
        let (http, smtp) = (&c.listeners()[0], &c.listeners()[1]);
        assert!(c.listener_limits(http).get_rate_per_address().is_none());
        assert_eq!(
            c.listener_limits(smtp)
                .get_rate_per_address()
                .map(|r| r.to_string()),
            Some("10/min".into())
        );
    }
}
