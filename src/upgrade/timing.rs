//! How long the pipeline waits: back-off after errors, jitter on the interval.

use std::time::Duration;

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
}
