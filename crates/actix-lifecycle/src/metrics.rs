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
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::error::LifecycleError;
use crate::phase::{Phase, ShutdownHandle};
use crate::registry::{RefuseReason, Shared};

/// Default metric name prefix.
pub const DEFAULT_PREFIX: &str = "lifecycle";

/// Upper bounds (seconds) of the connection duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Per (protocol, listener) statistics of one shard. Aligned so that the
/// statistics of shards on different threads never share a cache line.
#[derive(Debug, Clone, Default)]
#[repr(align(128))]
pub(crate) struct KindStats {
    pub(crate) live: u64,
    pub(crate) accepted: u64,
    pub(crate) aborted: u64,
    /// Refusals by [`RefuseReason::index`](crate::RefuseReason).
    pub(crate) refused: [u64; crate::registry::REASONS],
    pub(crate) duration_count: u64,
    pub(crate) duration_sum: f64,
    /// Non-cumulative counts per bucket of [`DURATION_BUCKETS`].
    pub(crate) duration_buckets: [u64; DURATION_BUCKETS.len()],
}

impl KindStats {
    pub(crate) fn observe(&mut self, seconds: f64) {
        self.duration_count += 1;
        self.duration_sum += seconds;
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.duration_buckets[i] += 1;
        }
    }

    pub(crate) fn add(&mut self, other: &KindStats) {
        self.live += other.live;
        self.accepted += other.accepted;
        self.aborted += other.aborted;
        for (a, b) in self.refused.iter_mut().zip(other.refused.iter()) {
            *a += b;
        }
        self.duration_count += other.duration_count;
        self.duration_sum += other.duration_sum;
        for (a, b) in self
            .duration_buckets
            .iter_mut()
            .zip(other.duration_buckets.iter())
        {
            *a += b;
        }
    }
}

pub(crate) struct RegistryCollector {
    shared: Arc<Shared>,
    names: [String; 5],
    descs: Vec<Desc>,
}

const LABELS: [&str; 2] = ["protocol", "listener"];

impl RegistryCollector {
    pub(crate) fn new(shared: Arc<Shared>, prefix: &str) -> prometheus::Result<Self> {
        let names = [
            format!("{prefix}_connections"),
            format!("{prefix}_connections_accepted_total"),
            format!("{prefix}_connections_aborted_total"),
            format!("{prefix}_connection_duration_seconds"),
            format!("{prefix}_refused_total"),
        ];
        let helps = [
            "Live connections by protocol and listener.",
            "Connections accepted and registered.",
            "Connections aborted by shutdown (including ones registered after it).",
            "How long connections lived, from registration to unregistration.",
            "Connections refused by admission control, by reason (never registered as live).",
        ];
        let labels: Vec<String> = LABELS.iter().map(|s| (*s).to_owned()).collect();
        let with_reason: Vec<String> = labels
            .iter()
            .cloned()
            .chain(std::iter::once("reason".to_owned()))
            .collect();
        let descs = names
            .iter()
            .zip(helps)
            .enumerate()
            .map(|(i, (n, h))| {
                let labels = if i == 4 { &with_reason } else { &labels };
                Desc::new(n.clone(), h.to_owned(), labels.clone(), HashMap::new())
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(RegistryCollector {
            shared,
            names,
            descs,
        })
    }
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn labels(protocol: &str, listener: &str) -> Vec<LabelPair> {
    label_pairs(&[("listener", listener), ("protocol", protocol)])
}

fn label_pairs(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
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

impl Collector for RegistryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.shared.stats_by_kind();
        let mut gauges = Vec::new();
        let mut accepted = Vec::new();
        let mut aborted = Vec::new();
        let mut durations = Vec::new();
        let mut refused = Vec::new();
        let seen = |s: &KindStats| s.accepted > 0 || s.refused.iter().any(|n| *n > 0);
        for (kind, s) in totals.iter().filter(|(_, s)| seen(s)) {
            for reason in RefuseReason::ALL {
                let mut m = Metric::default();
                m.set_label(label_pairs(&[
                    ("listener", &kind.listener),
                    ("protocol", &kind.protocol),
                    ("reason", reason.as_str()),
                ]));
                let mut c = Counter::default();
                c.set_value(s.refused[reason.index()] as f64);
                m.set_counter(c);
                refused.push(m);
            }
            let lp = labels(&kind.protocol, &kind.listener);
            let mut m = Metric::default();
            m.set_label(lp.clone());
            let mut g = Gauge::default();
            g.set_value(s.live as f64);
            m.set_gauge(g);
            gauges.push(m);

            for (value, out) in [(s.accepted, &mut accepted), (s.aborted, &mut aborted)] {
                let mut m = Metric::default();
                m.set_label(lp.clone());
                let mut c = Counter::default();
                c.set_value(value as f64);
                m.set_counter(c);
                out.push(m);
            }

            let mut m = Metric::default();
            m.set_label(lp);
            let mut h = Histogram::default();
            h.set_sample_count(s.duration_count);
            h.set_sample_sum(s.duration_sum);
            let mut cumulative = 0;
            let buckets = DURATION_BUCKETS
                .iter()
                .zip(s.duration_buckets.iter())
                .map(|(bound, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            m.set_histogram(h);
            durations.push(m);
        }
        if gauges.is_empty() {
            return Vec::new();
        }
        vec![
            family(
                &self.names[0],
                self.descs[0].help.as_str(),
                MetricType::GAUGE,
                gauges,
            ),
            family(
                &self.names[1],
                self.descs[1].help.as_str(),
                MetricType::COUNTER,
                accepted,
            ),
            family(
                &self.names[2],
                self.descs[2].help.as_str(),
                MetricType::COUNTER,
                aborted,
            ),
            family(
                &self.names[3],
                self.descs[3].help.as_str(),
                MetricType::HISTOGRAM,
                durations,
            ),
            family(
                &self.names[4],
                self.descs[4].help.as_str(),
                MetricType::COUNTER,
                refused,
            ),
        ]
    }
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
                let mut p = LabelPair::default();
                p.set_name("phase".to_owned());
                p.set_value(phase.as_str().to_owned());
                let mut g = Gauge::default();
                g.set_value(if *phase == now { 1.0 } else { 0.0 });
                let mut m = Metric::default();
                m.set_label(vec![p]);
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
