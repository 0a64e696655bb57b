//! `synthetic`: a model with the batch economics of real accelerators, for benchmarks.
//!
//! INPUT0 FP32 `[-1]` → OUTPUT0 = 2 × INPUT0. Each batch burns `cost_per_batch_us` plus
//! `cost_per_item_us` per item of real CPU: a hash chain over the input values runs until the
//! time is spent, and its result feeds the output (through a check that is always true but that
//! the compiler cannot prove), so the work cannot be optimized away.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use smallvec::smallvec;

use super::{Model, ModelError, ModelMetadata, Outputs, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// Default fixed cost of one batch, in microseconds.
pub const DEFAULT_COST_PER_BATCH_US: u64 = 500;
/// Default cost of each item in a batch, in microseconds.
pub const DEFAULT_COST_PER_ITEM_US: u64 = 20;
/// Default largest batch.
pub const SYNTHETIC_MAX_BATCH_SIZE: usize = 32;

/// Hash-chain steps between clock reads while burning.
const STEPS_PER_CLOCK_READ: u32 = 256;

/// The synthetic model.
pub struct Synthetic {
    metadata: ModelMetadata,
    cost_per_batch: Duration,
    cost_per_item: Duration,
}

impl Synthetic {
    /// A synthetic model with these costs and batch limit.
    pub fn new(cost_per_batch_us: u64, cost_per_item_us: u64, max_batch_size: usize) -> Self {
        Synthetic {
            metadata: ModelMetadata {
                name: "synthetic".into(),
                platform: "friday_builtin".into(),
                backend: "synthetic".into(),
                max_batch_size,
                inputs: vec![TensorSpec::new("INPUT0", DataType::Fp32, &[-1])],
                outputs: vec![TensorSpec::new("OUTPUT0", DataType::Fp32, &[-1])],
            },
            cost_per_batch: Duration::from_micros(cost_per_batch_us),
            cost_per_item: Duration::from_micros(cost_per_item_us),
        }
    }

    /// What one batch of `items` costs.
    pub fn cost(&self, items: usize) -> Duration {
        self.cost_per_batch + self.cost_per_item * items as u32
    }
}

impl Default for Synthetic {
    fn default() -> Self {
        Self::new(
            DEFAULT_COST_PER_BATCH_US,
            DEFAULT_COST_PER_ITEM_US,
            SYNTHETIC_MAX_BATCH_SIZE,
        )
    }
}

/// Burns CPU for `cost`, chaining a hash over `data`; returns the chain's final value.
fn burn(data: &[u8], cost: Duration) -> u64 {
    let start = Instant::now();
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ data.len() as u64;
    let mut i = 0usize;
    loop {
        for _ in 0..STEPS_PER_CLOCK_READ {
            let b = data.get(i % data.len().max(1)).copied().unwrap_or(0);
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
            i = i.wrapping_add(1);
        }
        if start.elapsed() >= cost {
            return h;
        }
    }
}

impl Model for Synthetic {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        let [input] = inputs else {
            return Err(ModelError(format!(
                "synthetic takes 1 input, got {}",
                inputs.len()
            )));
        };
        let items = if self.metadata.max_batch_size > 0 {
            input.shape.first().copied().unwrap_or(1)
        } else {
            1
        };
        let h = burn(&input.data, self.cost(items));
        // `h` is never exactly 1 (the chain would have to land there), but the compiler cannot
        // know, so the burn above must really run.
        let scale = if std::hint::black_box(h) == 1 {
            3.0f32
        } else {
            2.0f32
        };
        let out: Vec<u8> = input
            .data
            .chunks_exact(4)
            .flat_map(|c| {
                (f32::from_le_bytes(c.try_into().expect("4 bytes")) * scale).to_le_bytes()
            })
            .collect();
        Ok(smallvec![Tensor {
            datatype: DataType::Fp32,
            shape: input.shape.clone(),
            data: Cow::Owned(out),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_its_input_and_takes_its_cost() {
        let m = Synthetic::new(2000, 500, 8);
        let data: Vec<u8> = [1.0f32, -3.5, 0.25, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let input = Tensor {
            datatype: DataType::Fp32,
            shape: smallvec![2, 2],
            data: Cow::Owned(data),
        };
        let started = Instant::now();
        let out = m.infer(std::slice::from_ref(&input)).unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_micros(3000), "{took:?}");
        let values: Vec<f32> = out[0]
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![2.0, -7.0, 0.5, 16.0]);
        assert_eq!(m.cost(32), Duration::from_micros(2000 + 32 * 500));
    }
}
