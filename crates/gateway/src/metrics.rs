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
}

impl GatewayMetrics {
    /// Outcomes counted in `<prefix>_smtp_messages_total{outcome}`.
    pub const OUTCOMES: [&'static str; 4] = ["accepted", "too_big", "line_too_long", "spool_error"];

    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        let messages = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_smtp_messages_total"),
                "SMTP messages received, by outcome (accepted, too_big, line_too_long, spool_error).",
            ),
            &["outcome"],
        )?;
        let bytes = IntCounter::new(
            format!("{prefix}_smtp_spooled_bytes_total"),
            "Bytes written to the spool for accepted SMTP messages.",
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        for outcome in Self::OUTCOMES {
            messages.with_label_values(&[outcome]);
        }
        Ok(GatewayMetrics { messages, bytes })
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
