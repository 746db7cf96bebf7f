//! Repeated measurements and their summary (median, min, max).

use std::fmt;
use std::time::Duration;

/// What a figure measures, which decides how it is printed and which way
/// is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Events per second (higher is better).
    PerSecond,
    /// Milliseconds (lower is better).
    Millis,
    /// Microseconds (lower is better), e.g. CPU time per connection.
    Micros,
    /// Nanoseconds (lower is better), e.g. one registration.
    Nanos,
    /// Bytes (lower is better).
    Bytes,
    /// A count (lower is better), e.g. extra file descriptors.
    Count,
    /// A ratio of two figures ("1.01×"); which way is better depends on
    /// the figures divided (see [`paired_ratio`]).
    Ratio,
}

/// One figure per repetition.
#[derive(Debug, Clone)]
pub(crate) struct Samples {
    unit: Unit,
    values: Vec<f64>,
}

impl Samples {
    pub(crate) fn new(unit: Unit) -> Self {
        Self {
            unit,
            values: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    /// Records `events` that took `elapsed` as a rate.
    pub(crate) fn push_rate(&mut self, events: u64, elapsed: Duration) {
        debug_assert_eq!(self.unit, Unit::PerSecond);
        self.push(events as f64 / elapsed.as_secs_f64().max(1e-9));
    }

    /// Records a duration in milliseconds.
    pub(crate) fn push_duration(&mut self, elapsed: Duration) {
        debug_assert_eq!(self.unit, Unit::Millis);
        self.push(elapsed.as_secs_f64() * 1e3);
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            unit: self.unit,
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }
}

/// Per repetition, `ours` divided by `baseline` (the two measured in the
/// same repetition, moments apart), summarised: on a machine whose load
/// drifts between repetitions this compares like with like, where the
/// ratio of two medians can pair a quiet repetition with a busy one.
/// `None` without samples or when the counts differ.
pub(crate) fn paired_ratio(ours: &Samples, baseline: &Samples) -> Option<Summary> {
    if ours.values.is_empty() || ours.values.len() != baseline.values.len() {
        return None;
    }
    let mut ratios = Samples::new(Unit::Ratio);
    for (o, b) in ours.values.iter().zip(&baseline.values) {
        ratios.push(o / b);
    }
    ratios.summary()
}

/// Median, min and max of a set of repetitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) unit: Unit,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Summary {
    /// `self` relative to `baseline`, medians, as "how many times the
    /// baseline": for rates ours/baseline, for times ours/baseline too
    /// (targets say which way is good).
    pub(crate) fn ratio_to(&self, baseline: &Summary) -> f64 {
        self.median / baseline.median
    }
}

/// A value in the unit's usual form: `1.23 M/s`, `45.6 ms`, `96 B`.
pub(crate) fn format_value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::PerSecond => {
            if v >= 1e6 {
                format!("{:.2} M/s", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1} k/s", v / 1e3)
            } else {
                format!("{v:.0}/s")
            }
        }
        Unit::Millis => {
            if v >= 100.0 {
                format!("{v:.0} ms")
            } else if v >= 10.0 {
                format!("{v:.1} ms")
            } else {
                format!("{v:.2} ms")
            }
        }
        Unit::Micros => format!("{v:.1} µs"),
        Unit::Nanos => format!("{v:.0} ns"),
        Unit::Bytes => format!("{v:.0} B"),
        Unit::Count => format!("{v:.0}"),
        Unit::Ratio => format!("{v:.2}×"),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.n == 1 || self.min == self.max {
            write!(f, "{}", format_value(self.unit, self.median))
        } else {
            write!(
                f,
                "{} ({}–{})",
                format_value(self.unit, self.median),
                format_value(self.unit, self.min),
                format_value(self.unit, self.max)
            )
        }
    }
}

/// Per contender: the row's figure and the server process's CPU time over
/// the same span, one sample per repetition.
pub(crate) struct Measured {
    pub(crate) figure: Vec<Samples>,
    pub(crate) cpu: Vec<Samples>,
}

impl Measured {
    /// Runs `one(i)` for each of `count` contenders, `reps` times,
    /// interleaved (the order rotates every repetition); `one` returns the
    /// figure (in `figure_unit`) and the CPU time (in `cpu_unit`).
    pub(crate) fn interleaved(
        count: usize,
        reps: usize,
        (figure_unit, cpu_unit): (Unit, Unit),
        mut one: impl FnMut(usize) -> crate::Res<(f64, f64)>,
    ) -> crate::Res<Self> {
        let mut measured = Measured {
            figure: vec![Samples::new(figure_unit); count],
            cpu: vec![Samples::new(cpu_unit); count],
        };
        for rep in 0..reps {
            for i in crate::rotate(count, rep) {
                let (figure, cpu) = one(i)?;
                measured.figure[i].push(figure);
                measured.cpu[i].push(cpu);
            }
        }
        Ok(measured)
    }
}
