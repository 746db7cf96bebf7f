//! The prometheus collector of the connection registry: reads the counts
//! the shards keep ([`Shared::stats_by_kind`]) when scraped. The metric
//! names and labels are listed in the crate's metrics module.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::admission::RefuseReason;
use super::stats::{KindStats, DURATION_BUCKETS};
use super::Shared;
use crate::metrics::{family, label_pairs};

/// Publishes the registry's metrics, summed over its shards when scraped.
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

fn labels(protocol: &str, listener: &str) -> Vec<LabelPair> {
    label_pairs(&[("listener", listener), ("protocol", protocol)])
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
