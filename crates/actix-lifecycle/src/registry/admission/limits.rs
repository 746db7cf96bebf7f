//! The admission limits a listener is configured with: [`Limits`] and the
//! connection [`Rate`] per client network.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LimitsError;

/// A connection rate: at most `count` connections at once, then one more
/// every `per / count` (a token bucket of `count` tokens refilled over
/// `per`).
///
/// ```
/// use std::time::Duration;
/// use actix_lifecycle::Rate;
///
/// let rate: Rate = "60/min".parse()?;
/// assert_eq!((rate.count(), rate.per()), (60, Duration::from_secs(60)));
/// assert_eq!("5/10s".parse::<Rate>()?.per(), Duration::from_secs(10));
/// let err = "60 per minute".parse::<Rate>().unwrap_err();
/// assert!(err.to_string().contains("\"60/min\""));
/// # Ok::<(), actix_lifecycle::LimitsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub(super) count: u32,
    pub(super) per: Duration,
}

/// Longest period of a [`Rate`].
const MAX_RATE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

impl Rate {
    /// `count` connections per `per`: `count` at least 1, `per` from 1 ms
    /// to 7 days.
    pub fn new(count: u32, per: Duration) -> Result<Rate, LimitsError> {
        if count == 0 {
            return Err(LimitsError::RateCount {
                text: format!("{count}/{per:?}"),
            });
        }
        if per < Duration::from_millis(1) || per > MAX_RATE_PERIOD {
            return Err(LimitsError::RatePeriod {
                text: format!("{count}/{per:?}"),
            });
        }
        Ok(Rate { count, per })
    }

    /// Connections allowed at once (the bucket's size).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period over which `count` connections are allowed.
    pub fn per(&self) -> Duration {
        self.per
    }

    pub(super) fn per_nanos(&self) -> u64 {
        u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        if self.per.subsec_nanos() != 0 {
            write!(f, "{}/{}ms", self.count, self.per.as_millis())
        } else if secs % 86_400 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 86_400, "d"))
        } else if secs % 3600 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 3600, "h"))
        } else if secs % 60 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 60, "min"))
        } else {
            write!(f, "{}/{}", self.count, unit(secs, "s"))
        }
    }
}

fn unit(n: u64, name: &str) -> String {
    if n == 1 {
        name.to_owned()
    } else {
        format!("{n}{name}")
    }
}

impl FromStr for Rate {
    type Err = LimitsError;

    /// `COUNT/UNIT` or `COUNT/NUNIT`: units `ms`, `s`, `min` (or `m`), `h`,
    /// `d` (long forms such as `second`, `minute`, `hour`, `day` too).
    fn from_str(text: &str) -> Result<Rate, LimitsError> {
        let syntax = || LimitsError::RateSyntax {
            text: text.to_owned(),
        };
        let (count, period) = text.split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| LimitsError::RateCount {
            text: text.to_owned(),
        })?;
        let period = period.trim();
        let digits = period.chars().take_while(char::is_ascii_digit).count();
        let (n, name) = period.split_at(digits);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| syntax())?
        };
        let unit = match name.trim() {
            "ms" | "msec" | "millisecond" | "milliseconds" => Duration::from_millis(1),
            "s" | "sec" | "second" | "seconds" => Duration::from_secs(1),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(60),
            "h" | "hour" | "hours" => Duration::from_secs(3600),
            "d" | "day" | "days" => Duration::from_secs(86_400),
            _ => return Err(syntax()),
        };
        let per = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| LimitsError::RatePeriod {
                text: text.to_owned(),
            })?;
        Rate::new(count, per).map_err(|e| match e {
            LimitsError::RateCount { .. } => LimitsError::RateCount {
                text: text.to_owned(),
            },
            _ => LimitsError::RatePeriod {
                text: text.to_owned(),
            },
        })
    }
}

/// Admission limits of a listener (or the registry-wide default). Every
/// limit is off by default.
///
/// They apply where connections are admitted: the
/// [`ListenerActor`](crate::ListenerActor)'s accept path,
/// [`RegistryShard::admit`](crate::RegistryShard::admit) and
/// [`admit_untracked`](crate::RegistryShard::admit_untracked). Connections
/// registered without admission — an actix-web server given to
/// `Lifecycle::serve_actix_web` (feature `actix-web`), or
/// [`RegistryShard::register`](crate::RegistryShard::register) — are counted
/// in the listener's live count but never refused.
///
/// ```
/// use actix_lifecycle::{Limits, Rate};
///
/// let limits = Limits::none()
///     .max_connections(2000)
///     .max_per_address(20)
///     .address_prefix(32, 64)?
///     .rate_per_address("60/min".parse::<Rate>()?);
/// assert_eq!(limits.get_max_connections(), Some(2000));
/// assert_eq!(limits.get_max_per_address(), Some(20));
/// assert!(Limits::none().address_prefix(32, 96).is_err());
/// # Ok::<(), actix_lifecycle::LimitsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub(super) max_connections: Option<u32>,
    pub(super) max_per_address: Option<u32>,
    pub(super) prefix_v4: u8,
    pub(super) prefix_v6: u8,
    pub(super) rate: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::none()
    }
}

/// Longest IPv4 prefix: one host.
pub const MAX_PREFIX_V4: u8 = 32;
/// Longest IPv6 prefix: /64, the smallest network a site is given; a
/// longer one would let one client rotate through 2^64 addresses.
pub const MAX_PREFIX_V6: u8 = 64;

impl Limits {
    /// No limit; client networks are IPv4 /32 and IPv6 /64.
    pub const fn none() -> Limits {
        Limits {
            max_connections: None,
            max_per_address: None,
            prefix_v4: MAX_PREFIX_V4,
            prefix_v6: MAX_PREFIX_V6,
            rate: None,
        }
    }

    /// At most `n` live connections on the listener (0 refuses every
    /// connection). Default: no limit.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// At most `n` live connections per client network on the listener.
    /// Default: no limit.
    pub fn max_per_address(mut self, n: u32) -> Self {
        self.max_per_address = Some(n);
        self
    }

    /// The prefix lengths that group client addresses into networks:
    /// IPv4 0 to 32 (default 32), IPv6 0 to 64 (default 64). IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub fn address_prefix(mut self, v4: u8, v6: u8) -> Result<Self, LimitsError> {
        if v4 > MAX_PREFIX_V4 {
            return Err(LimitsError::Prefix {
                family: 4,
                prefix: v4,
                max: MAX_PREFIX_V4,
            });
        }
        if v6 > MAX_PREFIX_V6 {
            return Err(LimitsError::Prefix {
                family: 6,
                prefix: v6,
                max: MAX_PREFIX_V6,
            });
        }
        self.prefix_v4 = v4;
        self.prefix_v6 = v6;
        Ok(self)
    }

    /// At most `rate` new connections per client network on the listener.
    /// Default: no limit.
    pub fn rate_per_address(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// The per-listener limit, if any.
    pub fn get_max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The per-network limit, if any.
    pub fn get_max_per_address(&self) -> Option<u32> {
        self.max_per_address
    }

    /// The (IPv4, IPv6) prefix lengths of a client network.
    pub fn get_address_prefix(&self) -> (u8, u8) {
        (self.prefix_v4, self.prefix_v6)
    }

    /// The per-network rate, if any.
    pub fn get_rate_per_address(&self) -> Option<Rate> {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let ok = [
            ("60/min", 60, 60),
            ("60/m", 60, 60),
            ("10/s", 10, 1),
            ("5/10s", 5, 10),
            ("100/h", 100, 3600),
            ("1000/day", 1000, 86_400),
            (" 3 / 2min ", 3, 120),
        ];
        for (text, count, secs) in ok {
            let r: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((r.count(), r.per()), (count, Duration::from_secs(secs)));
            assert_eq!(r.to_string().parse::<Rate>().ok(), Some(r), "{r}");
        }
        assert_eq!(
            "60/min".parse::<Rate>().map(|r| r.to_string()).ok(),
            Some("60/min".into())
        );
        let bad = [
            ("60", "COUNT/UNIT"),
            ("60/fortnight", "COUNT/UNIT"),
            ("x/min", "count"),
            ("0/min", "count"),
            ("1/0s", "period"),
            ("1/8d", "period"),
        ];
        for (text, needle) in bad {
            let e = text.parse::<Rate>().expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains(text), "{text}: {e}");
        }
    }
}
