//! When an open-loop run intends to send each request: a fixed schedule decided up front, so the
//! load does not slow down when the server does (which is how closed-loop tools hide the tail).
//!
//! Latency is measured from a request's intended send time, not from when a free connection
//! finally sent it ([`corrected_latency`]): a server stall shows up in every request it delayed,
//! as a user behind it would see it (coordinated omission, corrected).

use std::time::{Duration, Instant};

/// How arrivals are spaced.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Exactly `1 / rate` apart.
    Constant,
    /// Exponentially distributed gaps with mean `1 / rate` (a Poisson process), as independent
    /// users produce.
    Poisson,
}

/// The intended send times of an open-loop run, one after another.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    /// Offset of the next send from `start`, in nanoseconds; accumulated in floating point so
    /// that rounding never drifts the rate, whatever the gap.
    next_ns: f64,
    mean_gap_ns: f64,
    arrival: Arrival,
    rng: fastrand::Rng,
}

impl Schedule {
    /// A schedule of `rate` requests per second starting at `start`, seeded for repeatability.
    /// The caller checks that the rate is positive and finite.
    pub fn new(start: Instant, rate: f64, arrival: Arrival, seed: u64) -> Self {
        assert!(
            rate > 0.0 && rate.is_finite(),
            "a schedule needs a positive, finite rate"
        );
        Schedule {
            start,
            next_ns: 0.0,
            mean_gap_ns: 1e9 / rate,
            arrival,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next intended send time (non-decreasing).
    pub fn next_send(&mut self) -> Instant {
        let at = self.peek();
        self.next_ns += match self.arrival {
            Arrival::Constant => self.mean_gap_ns,
            // Inverse transform sampling: -ln(U) is exponential with mean 1; 1 - f64() is in
            // (0, 1], so the logarithm is finite.
            Arrival::Poisson => -(1.0 - self.rng.f64()).ln() * self.mean_gap_ns,
        };
        at
    }

    /// The intended time of the next request, without consuming it.
    pub fn peek(&self) -> Instant {
        self.start + Duration::from_nanos(self.next_ns as u64)
    }
}

/// A response's latency as its user saw it: from when the request was meant to be sent.
pub fn corrected_latency(intended: Instant, completed: Instant) -> Duration {
    completed.saturating_duration_since(intended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_arrivals_are_evenly_spaced() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000.0, Arrival::Constant, 1);
        let times: Vec<Instant> = (0..5).map(|_| s.next_send()).collect();
        for (i, t) in times.iter().enumerate() {
            assert_eq!(*t - t0, Duration::from_millis(i as u64));
        }
        assert_eq!(s.peek() - t0, Duration::from_millis(5));
    }

    #[test]
    fn poisson_arrivals_have_the_mean_rate_and_exponential_gaps() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 10_000.0, Arrival::Poisson, 42);
        let n = 100_000;
        let mut prev = s.next_send();
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let t = s.next_send();
            assert!(t >= prev);
            gaps.push((t - prev).as_nanos() as f64);
            prev = t;
        }
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!(
            (mean - 100_000.0).abs() < 2_000.0,
            "mean gap {mean} ns, want 100 µs"
        );
        // Exponential: P(gap > mean) = 1/e, and the coefficient of variation is 1.
        let above = gaps.iter().filter(|&&g| g > 100_000.0).count() as f64 / n as f64;
        assert!(
            (above - (-1.0f64).exp()).abs() < 0.01,
            "P(gap > mean) = {above}"
        );
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}");
    }

    #[test]
    fn poisson_schedules_repeat_with_the_seed() {
        let t0 = Instant::now();
        let mut a = Schedule::new(t0, 500.0, Arrival::Poisson, 7);
        let mut b = Schedule::new(t0, 500.0, Arrival::Poisson, 7);
        for _ in 0..100 {
            assert_eq!(a.next_send(), b.next_send());
        }
    }

    #[test]
    fn latency_counts_from_the_intended_send_time() {
        // A server stalls for 100 ms: requests meant for every millisecond of the stall were
        // sent late; each one's latency includes the time it waited to be sent.
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000.0, Arrival::Constant, 1);
        let stall_end = t0 + Duration::from_millis(100);
        let latencies: Vec<Duration> = (0..100)
            .map(|_| {
                let intended = s.next_send();
                let sent = intended.max(stall_end);
                corrected_latency(intended, sent + Duration::from_micros(50))
            })
            .collect();
        assert_eq!(latencies[0], Duration::from_micros(100_050));
        assert_eq!(latencies[99], Duration::from_micros(1_050));
        // Uncorrected, every one of them would read 50 µs.
        assert!(latencies.iter().all(|l| *l >= Duration::from_micros(1_050)));
    }
}
