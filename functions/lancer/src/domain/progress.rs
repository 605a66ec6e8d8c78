//! A task's progress over time: every `{fraction, message, metrics}` a script reported,
//! with the time the runner read it, so a console can draw a loss curve. Bounded: a
//! script reporting forever keeps at most [`MAX_POINTS`] points of at most
//! [`MAX_POINT_BYTES`] each.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::task::Progress;

/// The most points a history keeps.
pub const MAX_POINTS: usize = 2000;

/// The most bytes of one point as JSON; a bigger report moves the task's progress but is
/// not kept in its history.
pub const MAX_POINT_BYTES: usize = 2048;

/// One report, and when the runner read it (within about a second of the script's write).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressPoint {
    /// When the runner read the report.
    pub at: DateTime<Utc>,
    /// The report itself, its fields inline in the point's JSON.
    #[serde(flatten)]
    pub progress: Progress,
}

/// An attempt's progress history as the lake keeps it.
///
/// Reports are grouped into series by the names of their metrics (`{epoch, batch_loss}`
/// apart from `{epoch, loss, accuracy}`). When the history is full, the longest series
/// drops every other point and from then on keeps one report in two (then four, ...), so
/// a frequent series is thinned evenly over its whole run while a rare one, such as a
/// point per epoch, stays whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressHistory {
    /// Oldest first.
    pub points: Vec<ProgressPoint>,
    /// Reports received, kept or not.
    pub reported: u64,
    /// Reports left out: by thinning, or for being larger than 2 KiB.
    pub dropped: u64,
    #[serde(skip)]
    series: BTreeMap<String, Series>,
}

/// How one series is thinned: it keeps the reports whose number is a multiple of `stride`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    stride: u64,
    seen: u64,
}

impl ProgressHistory {
    /// Records a report read at `at`; says whether it was kept.
    pub fn record(&mut self, progress: Progress, at: DateTime<Utc>) -> bool {
        self.reported += 1;
        let point = ProgressPoint { at, progress };
        let fits = serde_json::to_vec(&point).is_ok_and(|json| json.len() <= MAX_POINT_BYTES);
        if fits && self.points.len() == MAX_POINTS {
            self.thin_longest();
        }
        let series = self
            .series
            .entry(series_of(&point.progress))
            .or_insert(Series { stride: 1, seen: 0 });
        let turn = series.seen.is_multiple_of(series.stride);
        series.seen += 1;
        if !(fits && turn) {
            self.dropped += 1;
            return false;
        }
        self.points.push(point);
        true
    }

    /// Halves the series with the most points, keeping its first, third, ... point.
    fn thin_longest(&mut self) {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for point in &self.points {
            *counts.entry(series_of(&point.progress)).or_default() += 1;
        }
        let Some((longest, _)) = counts.into_iter().max_by_key(|(_, count)| *count) else {
            return;
        };
        let before = self.points.len();
        let mut nth = 0u64;
        self.points.retain(|point| {
            if series_of(&point.progress) != longest {
                return true;
            }
            nth += 1;
            nth % 2 == 1
        });
        self.dropped += (before - self.points.len()) as u64;
        if let Some(series) = self.series.get_mut(&longest) {
            series.stride *= 2;
        }
    }
}

/// The series a report belongs to: the sorted names of its metrics.
fn series_of(progress: &Progress) -> String {
    match progress.metrics.as_ref().and_then(|m| m.as_object()) {
        Some(metrics) => metrics.keys().cloned().collect::<Vec<_>>().join(","),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(metrics: serde_json::Value) -> Progress {
        Progress {
            fraction: Some(0.5),
            message: None,
            metrics: Some(metrics),
        }
    }

    #[test]
    fn a_frequent_series_is_thinned_evenly_while_a_rare_one_stays_whole() {
        let mut history = ProgressHistory::default();
        let now = Utc::now();
        let mut epochs = 0;
        for step in 0..20_000u64 {
            history.record(report(json!({"step": step, "batch_loss": 1.0})), now);
            if step % 1000 == 999 {
                epochs += 1;
                history.record(report(json!({"epoch": epochs, "loss": 0.5})), now);
            }
        }
        assert!(history.points.len() <= MAX_POINTS);
        assert_eq!(history.reported, 20_020);
        assert_eq!(
            history.dropped,
            history.reported - history.points.len() as u64
        );
        let epochs_kept: Vec<_> = history
            .points
            .iter()
            .filter_map(|p| p.progress.metrics.as_ref()?.get("epoch")?.as_u64())
            .collect();
        assert_eq!(
            epochs_kept,
            (1..=20).collect::<Vec<_>>(),
            "every epoch kept"
        );
        let steps: Vec<u64> = history
            .points
            .iter()
            .filter_map(|p| p.progress.metrics.as_ref()?.get("step")?.as_u64())
            .collect();
        let gaps: std::collections::BTreeSet<u64> = steps.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 1, "steps evenly spaced, got gaps {gaps:?}");
        assert_eq!(steps[0], 0);
        assert!(
            *steps.last().expect("steps kept") >= 20_000 - 16,
            "the run's end is kept"
        );
    }

    #[test]
    fn a_report_larger_than_the_point_limit_is_counted_but_not_kept() {
        let mut history = ProgressHistory::default();
        let big = Progress {
            fraction: Some(0.1),
            message: Some("x".repeat(MAX_POINT_BYTES)),
            metrics: None,
        };
        assert!(!history.record(big, Utc::now()));
        assert!(history.record(report(json!({"loss": 1.0})), Utc::now()));
        assert_eq!(
            (history.points.len(), history.reported, history.dropped),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_stored_history_reads_back_as_it_was_written() {
        let mut history = ProgressHistory::default();
        history.record(report(json!({"loss": 0.25})), Utc::now());
        let json = serde_json::to_string(&history).expect("serialise");
        let back: ProgressHistory = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.points, history.points);
        assert_eq!((back.reported, back.dropped), (1, 0));
        assert!(json.contains("\"loss\":0.25") && json.contains("\"fraction\":0.5"));
    }
}
