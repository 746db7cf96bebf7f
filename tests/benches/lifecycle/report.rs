//! The result table: one row per figure, ours against its baselines.

use crate::stats::{Summary, Unit};
use std::fmt::Write as _;

/// Whether a row meets its target.
#[derive(Debug, Clone)]
pub(crate) enum Met {
    Yes,
    No(String),
    /// Our side could not be measured in this run; the text says why.
    NotMeasured(String),
    /// The row has no target: the figures are reported as they are.
    Report,
    /// The scenario failed; the text says how.
    Failed(String),
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) ours: Option<Summary>,
    pub(crate) baselines: Vec<(String, Summary)>,
    pub(crate) target: String,
    /// Per-repetition ratios of ours to a baseline, by the baseline's name
    /// ([`crate::stats::paired_ratio`]); where one is given, the ratio
    /// column shows it instead of the ratio of the medians.
    pub(crate) paired: Vec<(String, Summary)>,
    pub(crate) met: Met,
}

impl Row {
    /// A row whose own side is missing, with the reason.
    pub(crate) fn without_ours(
        what: impl Into<String>,
        baselines: Vec<(String, Summary)>,
        target: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Self {
            what: what.into(),
            ours: None,
            baselines,
            target: target.into(),
            paired: Vec::new(),
            met: Met::NotMeasured(why.into()),
        }
    }

    fn ratios(&self) -> String {
        let Some(ours) = &self.ours else {
            return "—".into();
        };
        let parts: Vec<String> = self
            .baselines
            .iter()
            .map(|(name, b)| {
                if let Some((_, p)) = self.paired.iter().find(|(n, _)| n == name) {
                    return format!(
                        "{:.2}× {name} (median of per-repetition ratios, {:.2}–{:.2})",
                        p.median, p.min, p.max
                    );
                }
                match ours.ratio_to(b) {
                    // A baseline of 0 (e.g. no measurable growth) has no ratio.
                    r if r.is_finite() => format!("{r:.2}× {name}"),
                    _ => format!("— ({name} is 0)"),
                }
            })
            .collect();
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join("<br>")
        }
    }
}

/// The table in Markdown, plus a line per row that missed or was not
/// measured.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| what | ours | baseline(s), same run | ratio (ours / baseline, medians) | target | met? |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        let ours = row
            .ours
            .map(|s| s.to_string())
            .unwrap_or_else(|| "not measured".into());
        let baselines = if row.baselines.is_empty() {
            "—".to_string()
        } else {
            row.baselines
                .iter()
                .map(|(name, s)| format!("{name}: {s}"))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let met = match &row.met {
            Met::Yes => "yes".to_string(),
            Met::No(why) => format!("**no**: {why}"),
            Met::NotMeasured(why) => format!("not measured: {why}"),
            Met::Report => "(reported)".to_string(),
            Met::Failed(why) => format!("**bench failed**: {why}"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.what,
            ours,
            baselines,
            row.ratios(),
            row.target,
            met
        );
    }
    out
}

/// Figures as "median (min–max)" over n repetitions: how to read the table.
pub(crate) fn legend(reps: usize) -> String {
    format!(
        "Figures are the median (min–max) of {reps} interleaved repetitions \
         (a row that names another count: that many); rates are per second, \
         times in milliseconds. Ratios divide our median by the baseline's median \
         (for rates higher is better, for times lower is better), except where a \
         ratio says it is the median of per-repetition ratios: there each repetition \
         runs ours and the baseline moments apart, and the ratio of each pair is taken \
         first, which a machine whose load drifts disturbs less.\n"
    )
}

/// Checks "ours ≥ factor × baseline" (rates) or "ours ≤ factor × baseline"
/// (times), returning the shortfall as text.
pub(crate) fn check_ratio(
    ours: &Summary,
    baseline: &Summary,
    factor: f64,
    name: &str,
) -> Result<(), String> {
    let r = ours.ratio_to(baseline);
    match bound(ours.unit, r, factor) {
        Ok(()) => Ok(()),
        Err(rel) => Err(format!("{r:.2}× {name}, target {rel} {factor}×")),
    }
}

/// Whether `value` is on the good side of `bound` for `unit` (rates: at
/// least; everything else: at most); if not, the relation it missed.
fn bound(unit: Unit, value: f64, bound: f64) -> Result<(), &'static str> {
    match unit {
        Unit::PerSecond if value >= bound => Ok(()),
        Unit::PerSecond => Err("≥"),
        _ if value <= bound => Ok(()),
        _ => Err("≤"),
    }
}

/// Checks a per-repetition ratio ([`crate::stats::paired_ratio`]) of
/// rates: its median ≥ `factor`.
pub(crate) fn check_paired_rate(ratio: &Summary, factor: f64, name: &str) -> Result<(), String> {
    if ratio.median >= factor {
        Ok(())
    } else {
        Err(format!(
            "{:.2}× {name} (median of per-repetition ratios), target ≥ {factor}×",
            ratio.median
        ))
    }
}

/// Checks an absolute bound in the summary's unit.
pub(crate) fn check_abs(ours: &Summary, limit: f64, what: &str) -> Result<(), String> {
    bound(ours.unit, ours.median, limit).map_err(|rel| {
        format!(
            "{what} median {}, target {rel} {}",
            crate::stats::format_value(ours.unit, ours.median),
            crate::stats::format_value(ours.unit, limit)
        )
    })
}

/// Combines checks into a [`Met`].
pub(crate) fn met(checks: Vec<Result<(), String>>) -> Met {
    let misses: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
    if misses.is_empty() {
        Met::Yes
    } else {
        Met::No(misses.join("; "))
    }
}
