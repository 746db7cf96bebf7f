//! The gateway's own metrics (connection gauges come from
//! actix-lifecycle's registry).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Counters of the SMTP sink, registered in an injected registry.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let m = lifecycle_gateway::GatewayMetrics::register(&registry, "lifecycle")?;
/// m.message("accepted");
/// assert!(registry.gather().iter().any(|f| f.name() == "lifecycle_smtp_messages_total"));
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    messages: IntCounterVec,
    bytes: IntCounter,
    cut: IntCounterVec,
}

impl GatewayMetrics {
    /// Outcomes counted in `<prefix>_smtp_messages_total{outcome}`.
    pub const OUTCOMES: [&'static str; 5] = [
        "accepted",
        "too_big",
        "line_too_long",
        "bare_newline",
        "spool_error",
    ];

    /// Reasons counted in `<prefix>_sessions_cut_total{protocol,reason}`.
    pub const CUT_REASONS: [&'static str; 4] = [
        "idle_timeout",
        "data_deadline",
        "min_data_rate",
        "max_session",
    ];

    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        let messages = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_smtp_messages_total"),
                "SMTP messages received, by outcome (accepted, too_big, line_too_long, bare_newline, spool_error).",
            ),
            &["outcome"],
        )?;
        let bytes = IntCounter::new(
            format!("{prefix}_smtp_spooled_bytes_total"),
            "Bytes written to the spool for accepted SMTP messages.",
        )?;
        let cut = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_sessions_cut_total"),
                "Sessions ended by a timer, by protocol and reason (idle_timeout, data_deadline, min_data_rate, max_session).",
            ),
            &["protocol", "reason"],
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(cut.clone()))?;
        for outcome in Self::OUTCOMES {
            messages.with_label_values(&[outcome]);
        }
        for protocol in ["smtp", "imap"] {
            for reason in Self::CUT_REASONS {
                cut.with_label_values(&[protocol, reason]);
            }
        }
        Ok(GatewayMetrics {
            messages,
            bytes,
            cut,
        })
    }

    /// Counts one session of `protocol` ended by a timer (`reason`, one of
    /// [`CUT_REASONS`](Self::CUT_REASONS)).
    pub fn session_cut(&self, protocol: &str, reason: &str) {
        self.cut.with_label_values(&[protocol, reason]).inc();
    }

    /// Counts one message with this outcome.
    pub fn message(&self, outcome: &str) {
        self.messages.with_label_values(&[outcome]).inc();
    }

    /// Adds spooled bytes.
    pub fn spooled(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
    }
}
