//! Latency statistics for benchmarks: percentiles by the nearest-rank method and ratios.

use std::time::Duration;

/// Summary of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// The `q`-quantile (0.0..=1.0) of sorted samples by nearest rank; `None` when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(sorted.len() - 1)).copied()
}

/// Summarises samples (sorts them).
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Summary {
        count: samples.len(),
        p50_ms: ms(percentile(samples, 0.50)),
        p99_ms: ms(percentile(samples, 0.99)),
        max_ms: ms(samples.last().copied()),
    }
}

/// `a / b`, or `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if b == 0.0 { None } else { Some(a / b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&s, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&ms(&[7]), 0.99), Some(Duration::from_millis(7)));
    }

    #[test]
    fn summary_sorts_first() {
        let mut s = ms(&[30, 10, 20]);
        let sum = summarize(&mut s);
        assert_eq!(sum.count, 3);
        assert_eq!(sum.p50_ms, 20.0);
        assert_eq!(sum.max_ms, 30.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
