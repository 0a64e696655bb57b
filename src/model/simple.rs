//! `simple`: Triton's classic example model. INPUT0 and INPUT1 are INT32 [16]; OUTPUT0 is their
//! sum and OUTPUT1 their difference, element by element (wrapping on overflow, as two's-complement
//! hardware does, never panicking). Batched up to 8, like Triton's example.

use std::borrow::Cow;

use smallvec::smallvec;

use super::{i32_values, Model, ModelError, ModelMetadata, Outputs, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// Largest batch `simple` accepts (Triton's example uses 8).
pub const SIMPLE_MAX_BATCH_SIZE: usize = 8;

/// The simple add/sub model.
pub struct Simple {
    metadata: ModelMetadata,
}

impl Simple {
    /// `simple` as friday serves it by default.
    pub fn new() -> Self {
        Self::with_max_batch_size(SIMPLE_MAX_BATCH_SIZE)
    }

    /// `simple` taking batches of at most `max_batch_size` items (0: no batch dimension).
    pub fn with_max_batch_size(max_batch_size: usize) -> Self {
        Simple {
            metadata: ModelMetadata {
                name: "simple".into(),
                platform: "friday_builtin".into(),
                backend: "simple".into(),
                max_batch_size,
                inputs: vec![
                    TensorSpec::new("INPUT0", DataType::Int32, &[16]),
                    TensorSpec::new("INPUT1", DataType::Int32, &[16]),
                ],
                outputs: vec![
                    TensorSpec::new("OUTPUT0", DataType::Int32, &[16]),
                    TensorSpec::new("OUTPUT1", DataType::Int32, &[16]),
                ],
            },
        }
    }
}

impl Default for Simple {
    fn default() -> Self {
        Self::new()
    }
}

impl Model for Simple {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        let [a, b] = inputs else {
            return Err(ModelError(format!(
                "simple takes 2 inputs, got {}",
                inputs.len()
            )));
        };
        if a.data.len() != b.data.len() {
            return Err(ModelError(
                "simple: INPUT0 and INPUT1 differ in size".into(),
            ));
        }
        let mut sum = Vec::with_capacity(a.data.len());
        let mut diff = Vec::with_capacity(a.data.len());
        for (x, y) in i32_values(a).zip(i32_values(b)) {
            sum.extend_from_slice(&x.wrapping_add(y).to_le_bytes());
            diff.extend_from_slice(&x.wrapping_sub(y).to_le_bytes());
        }
        Ok(smallvec![
            Tensor {
                datatype: DataType::Int32,
                shape: a.shape.clone(),
                data: Cow::Owned(sum),
            },
            Tensor {
                datatype: DataType::Int32,
                shape: a.shape.clone(),
                data: Cow::Owned(diff),
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int32(values: &[i32]) -> Tensor<'static> {
        Tensor {
            datatype: DataType::Int32,
            shape: smallvec::smallvec![1, values.len()],
            data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    #[test]
    fn adds_and_subtracts_with_wrapping() {
        let inputs = [int32(&[1, 2, i32::MAX]), int32(&[10, -20, 1])];
        let out = Simple::new().infer(&inputs).unwrap();
        let sum: Vec<i32> = i32_values(&out[0]).collect();
        let diff: Vec<i32> = i32_values(&out[1]).collect();
        assert_eq!(sum, vec![11, -18, i32::MIN]);
        assert_eq!(diff, vec![-9, 22, i32::MAX - 1]);
    }
}
