//! Picking the next token from a row of logits: greedy at temperature 0, otherwise softmax
//! sampling at the request's temperature over its `top_k` most likely tokens, from a generator
//! seeded per request, so one seed always writes the same text.

/// How one request samples.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// 0 picks the most likely token every time.
    temperature: f32,
    /// Only the `top_k` most likely tokens are drawn from; 0 means all of them.
    top_k: usize,
    rng: fastrand::Rng,
}

impl Sampler {
    /// A sampler; `seed` fixes what it draws.
    pub fn new(temperature: f32, top_k: usize, seed: u64) -> Self {
        Sampler {
            temperature,
            top_k,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next token from `logits` (one per token of the vocabulary). `order` is scratch.
    pub fn pick(&mut self, logits: &[f32], order: &mut Vec<u32>) -> u32 {
        debug_assert!(!logits.is_empty());
        if self.temperature <= 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        order.clear();
        order.extend(0..logits.len() as u32);
        let k = match self.top_k {
            0 => logits.len(),
            k => k.min(logits.len()),
        };
        if k < logits.len() {
            // Partition the k largest to the front; their own order does not matter.
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                logits[b as usize].total_cmp(&logits[a as usize])
            });
            order.truncate(k);
        }
        let max = order
            .iter()
            .map(|&t| logits[t as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.temperature;
        let total: f32 = order
            .iter()
            .map(|&t| ((logits[t as usize] - max) * inv_t).exp())
            .sum();
        let mut draw = self.rng.f32() * total;
        for &t in order.iter() {
            draw -= ((logits[t as usize] - max) * inv_t).exp();
            if draw <= 0.0 {
                return t;
            }
        }
        *order.last().expect("the vocabulary is not empty")
    }
}

/// The index of the largest logit (the first, on ties).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(0.0, 0, 1);
        let mut order = Vec::new();
        assert_eq!(s.pick(&[0.1, 3.0, 2.0], &mut order), 1);
    }

    #[test]
    fn top_k_limits_the_draw() {
        let mut s = Sampler::new(5.0, 2, 7);
        let mut order = Vec::new();
        for _ in 0..200 {
            let t = s.pick(&[0.0, 1.0, 1.1, -4.0, 0.9], &mut order);
            assert!(t == 1 || t == 2, "{t}");
        }
    }

    #[test]
    fn one_seed_draws_the_same_tokens() {
        let logits = [0.3, 0.2, 0.5, 0.1, 0.0, 0.4];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0, seed);
            let mut order = Vec::new();
            (0..32)
                .map(|_| s.pick(&logits, &mut order))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn likelier_tokens_come_more_often() {
        let mut s = Sampler::new(1.0, 0, 3);
        let mut order = Vec::new();
        let mut counts = [0; 2];
        for _ in 0..2000 {
            counts[s.pick(&[0.0, 2.0], &mut order) as usize] += 1;
        }
        // e^2 / (1 + e^2) = 0.88
        assert!(counts[1] > 1600 && counts[1] < 1900, "{counts:?}");
    }
}
