//! How long the pipeline waits (back-off after errors, jitter on the interval), and where an
//! upgrade's time goes.

use std::time::{Duration, Instant};

/// Where one upgrade's time went, stage by stage: logged as one line once its worker serves
/// (`upgrade stages: download 3.1ms, verify 0.4ms, …; total 21.0ms`), which the bench reads.
pub(super) struct Stages {
    start: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Stages {
    pub(super) fn start() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            laps: Vec::new(),
        }
    }

    /// The stage `name` ended now; it began where the last one ended.
    pub(super) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }

    /// Stages timed elsewhere (by the master), which ended now.
    pub(super) fn add(&mut self, laps: &[(&'static str, Duration)]) {
        self.laps.extend_from_slice(laps);
        self.last = Instant::now();
    }

    pub(super) fn line(&self) -> String {
        let laps: Vec<String> = self
            .laps
            .iter()
            .map(|(name, took)| format!("{name} {took:.1?}"))
            .collect();
        format!("{}; total {:.1?}", laps.join(", "), self.last - self.start)
    }
}

pub(super) fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    interval
        .saturating_mul(1u32 << failures.min(16))
        .min(max.max(interval))
}

pub(super) fn with_jitter(interval: Duration, jitter: f64) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    interval + interval.mul_f64(jitter * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 1, s(60)), s(2));
        assert_eq!(backoff(s(1), 3, s(60)), s(8));
        assert_eq!(backoff(s(1), 30, s(60)), s(60));
        let j = with_jitter(s(10), 0.1);
        assert!(j >= s(10) && j <= s(11));
    }

    #[test]
    fn stages_add_up_to_the_total() {
        let mut stages = Stages::start();
        std::thread::sleep(Duration::from_millis(2));
        stages.lap("download");
        stages.add(&[
            ("spawn", Duration::from_micros(1500)),
            ("ready", Duration::from_millis(3)),
        ]);
        let line = stages.line();
        assert!(line.starts_with("download "), "{line}");
        assert!(
            line.contains(", spawn 1.5ms, ready 3.0ms; total "),
            "{line}"
        );
        let total = Duration::from_secs_f64(
            line.rsplit("total ")
                .next()
                .unwrap()
                .trim_end_matches("ms")
                .parse::<f64>()
                .unwrap()
                / 1000.0,
        );
        assert!(total >= Duration::from_millis(2), "{line}");
    }
}
