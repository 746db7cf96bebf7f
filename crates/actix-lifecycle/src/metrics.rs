//! Prometheus metrics of the connection registry, on an injected
//! `prometheus::Registry`.
//!
//! The registry keeps its counts per arbiter shard (plain integers under
//! the shard's uncontended lock) and sums them when scraped, so the accept
//! path never bounces a shared atomic between threads. Published, with
//! labels `protocol` and `listener`, created on first use:
//!
//! * `<prefix>_connections` (gauge): live connections;
//! * `<prefix>_connections_accepted_total` (counter);
//! * `<prefix>_connections_aborted_total` (counter);
//! * `<prefix>_connection_duration_seconds` (histogram);
//! * `<prefix>_refused_total` (counter, one more label `reason`:
//!   `listener_full`, `address_full`, `rate`, `descriptors`): connections
//!   refused by admission control, never registered as live.
//!
//! and, from the shutdown coordinator, `<prefix>_phase{phase}` (a state
//! set: 1 for the current phase, 0 for the others; phases `running`,
//! `lame_duck`, `draining`, `aborting`, `stopped`).

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::error::LifecycleError;
use crate::phase::{Phase, ShutdownHandle};

/// Default metric name prefix.
pub const DEFAULT_PREFIX: &str = "lifecycle";

/// A metric family of `metrics`.
pub(crate) fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

/// Label pairs, in the order given (prometheus wants them sorted by name).
pub(crate) fn label_pairs(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name((*k).to_owned());
            p.set_value((*v).to_owned());
            p
        })
        .collect()
}

/// Publishes `<prefix>_phase{phase}`: 1 for the current phase, 0 for the
/// others, read from the shutdown handle when scraped.
pub(crate) struct PhaseCollector {
    shutdown: ShutdownHandle,
    name: String,
    desc: Desc,
}

impl PhaseCollector {
    /// Registers the phase state set on `registry`.
    pub(crate) fn register(
        registry: &prometheus::Registry,
        prefix: &str,
        shutdown: ShutdownHandle,
    ) -> Result<(), LifecycleError> {
        let name = format!("{prefix}_phase");
        let desc = Desc::new(
            name.clone(),
            "Shutdown phase: 1 for the current one (running, lame_duck, draining, aborting, stopped)."
                .to_owned(),
            vec!["phase".to_owned()],
            HashMap::new(),
        )
        .map_err(|source| LifecycleError::Metrics {
            prefix: prefix.to_owned(),
            source,
        })?;
        registry
            .register(Box::new(PhaseCollector {
                shutdown,
                name,
                desc,
            }))
            .map_err(|source| LifecycleError::Metrics {
                prefix: prefix.to_owned(),
                source,
            })
    }
}

impl Collector for PhaseCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.shutdown.phase();
        let metrics = Phase::ALL
            .iter()
            .map(|phase| {
                let mut g = Gauge::default();
                g.set_value(if *phase == now { 1.0 } else { 0.0 });
                let mut m = Metric::default();
                m.set_label(label_pairs(&[("phase", phase.as_str())]));
                m.set_gauge(g);
                m
            })
            .collect();
        vec![family(
            &self.name,
            self.desc.help.as_str(),
            MetricType::GAUGE,
            metrics,
        )]
    }
}
