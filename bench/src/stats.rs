//! Median, min and max of a handful of timings.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub n: usize,
}

impl Stats {
    /// `None` for no samples. An even count takes the mean of the two middle values.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median_ms = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Some(Stats {
            median_ms,
            min_ms: ms[0],
            max_ms: ms[n - 1],
            n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn odd_count_takes_the_middle() {
        let s = Stats::of(&ms(&[30, 10, 20])).unwrap();
        assert_eq!(
            (s.median_ms, s.min_ms, s.max_ms, s.n),
            (20.0, 10.0, 30.0, 3)
        );
    }

    #[test]
    fn even_count_averages_the_middle_two() {
        assert_eq!(Stats::of(&ms(&[40, 10, 20, 30])).unwrap().median_ms, 25.0);
    }

    #[test]
    fn no_samples_no_stats() {
        assert_eq!(Stats::of(&[]), None);
    }
}
