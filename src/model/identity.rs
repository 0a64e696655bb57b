//! `identity`: returns its input unchanged (INPUT0 → OUTPUT0, FP32, dims [-1], batched up to 64).
//! The cheapest possible model, so benchmarks of it measure everything around the model.

use std::borrow::Cow;

use smallvec::smallvec;

use super::{Model, ModelError, ModelMetadata, Outputs, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// Largest batch `identity` accepts.
pub const IDENTITY_MAX_BATCH_SIZE: usize = 64;

/// The identity model.
pub struct Identity {
    metadata: ModelMetadata,
}

impl Identity {
    /// `identity` as friday serves it by default.
    pub fn new() -> Self {
        Self::with_max_batch_size(IDENTITY_MAX_BATCH_SIZE)
    }

    /// `identity` taking batches of at most `max_batch_size` items (0: no batch dimension).
    pub fn with_max_batch_size(max_batch_size: usize) -> Self {
        Identity {
            metadata: ModelMetadata {
                name: "identity".into(),
                platform: "friday_builtin".into(),
                backend: "identity".into(),
                max_batch_size,
                inputs: vec![TensorSpec::new("INPUT0", DataType::Fp32, &[-1])],
                outputs: vec![TensorSpec::new("OUTPUT0", DataType::Fp32, &[-1])],
            },
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

impl Model for Identity {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        let [input] = inputs else {
            return Err(ModelError(format!(
                "identity takes 1 input, got {}",
                inputs.len()
            )));
        };
        // The output borrows the input: no copy until the response is written.
        Ok(smallvec![Tensor {
            datatype: input.datatype,
            shape: input.shape.clone(),
            data: Cow::Borrowed(&input.data[..]),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_its_input() {
        let data: Vec<u8> = [1.0f32, -2.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let input = Tensor {
            datatype: DataType::Fp32,
            shape: smallvec::smallvec![1, 2],
            data: Cow::Owned(data.clone()),
        };
        let out = Identity::new().infer(std::slice::from_ref(&input)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape.as_slice(), &[1, 2]);
        assert_eq!(&out[0].data[..], &data[..]);
    }
}
