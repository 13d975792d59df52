//! Percentiles and restart windows.

use std::time::Duration;

use serde::Serialize;

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Dist {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Dist {
    /// From values in microseconds (sorted here).
    pub(crate) fn from_micros(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: values.len(),
            p50_ms: ms(percentile(&values, 0.50)),
            p99_ms: ms(percentile(&values, 0.99)),
            max_ms: ms(values[values.len() - 1]),
        }
    }

    pub(crate) fn from_durations(values: impl IntoIterator<Item = Duration>) -> Self {
        Self::from_micros(values.into_iter().map(|d| d.as_micros() as u64).collect())
    }

    /// `1.2 / 3.4 / 5.6 ms`, or `–` for an empty sample.
    pub(crate) fn cell(&self) -> String {
        if self.count == 0 {
            return "–".into();
        }
        format!(
            "{} / {} / {} ms",
            short(self.p50_ms),
            short(self.p99_ms),
            short(self.max_ms)
        )
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Three significant digits, without trailing noise: `0.412`, `12.3`, `245`.
pub(crate) fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// Time intervals, in microseconds since the epoch, sorted and merged.
pub(crate) struct Windows(Vec<(u64, u64)>);

impl Windows {
    pub(crate) fn new(windows: impl IntoIterator<Item = (Duration, Duration)>) -> Self {
        let mut list: Vec<(u64, u64)> = windows
            .into_iter()
            .map(|(a, b)| (a.as_micros() as u64, b.as_micros() as u64))
            .collect();
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
        for (start, end) in list {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Self(merged)
    }

    pub(crate) fn contains(&self, t_us: u64) -> bool {
        let index = self.0.partition_point(|(start, _)| *start <= t_us);
        index > 0 && t_us < self.0[index - 1].1
    }

    /// Total time covered within `[from, to)`, in seconds.
    pub(crate) fn covered_seconds(&self, from: u64, to: u64) -> f64 {
        self.0
            .iter()
            .map(|(a, b)| (*b).min(to).saturating_sub((*a).max(from)))
            .sum::<u64>() as f64
            / 1e6
    }
}
