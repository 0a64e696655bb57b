//! Models: the [`Model`] trait every backend implements, the built-in models, and the
//! [`ModelRegistry`] of what this server serves.
//!
//! A model is loaded once and shared read-only by every shard (`Arc<dyn Model>`, called with
//! `&self`). It sees inputs that the protocol layer has already checked against its
//! [`ModelMetadata`] (names, datatypes, shapes, batch size), in metadata order, and returns its
//! outputs in metadata order. A model must never panic on checked inputs and never block on I/O.

mod identity;
pub mod manager;
pub mod onnx;
pub mod onnxruntime;
pub mod pbtxt;
mod registry;
pub mod repository;
mod simple;
mod synthetic;
pub mod tinylm;

use smallvec::SmallVec;

pub use identity::Identity;
pub use manager::ModelManager;
pub use registry::{ModelEntry, ModelRegistry, Serving};
pub use simple::Simple;
pub use synthetic::Synthetic;
pub use tinylm::TinyLm;

use crate::tensor::{DataType, Tensor};

/// One input or output as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name (`INPUT0`).
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions without the batch dimension; -1 means any size.
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// A spec with `name`, `datatype` and `dims`.
    pub fn new(name: &str, datatype: DataType, dims: &[i64]) -> Self {
        TensorSpec {
            name: name.to_string(),
            datatype,
            dims: dims.to_vec(),
        }
    }
}

/// What a model declares about itself: the basis of metadata, config and input validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    /// Model name, as in the URL.
    pub name: String,
    /// KServe platform string (`<project>_<format>`).
    pub platform: String,
    /// Triton's backend name, reported in the model configuration.
    pub backend: String,
    /// Largest batch (first dimension) one request may carry; 0 means the model takes no batch
    /// dimension.
    pub max_batch_size: usize,
    /// Inputs, in the order [`Model::infer`] receives them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order [`Model::infer`] returns them.
    pub outputs: Vec<TensorSpec>,
}

/// The outputs of one inference, in metadata order. Two inline covers the built-in models.
pub type Outputs<'a> = SmallVec<[Tensor<'a>; 2]>;

/// A model failed to run on valid inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inference model. Implemented by the built-in models and by the ONNX backend.
pub trait Model: Send + Sync + 'static {
    /// What the model takes and returns.
    fn metadata(&self) -> &ModelMetadata;

    /// Runs one batch. `inputs` match [`Model::metadata`] (order, datatypes, shapes and, for
    /// batched models, one shared batch size in `1..=max_batch_size`). Outputs may borrow from the
    /// inputs.
    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError>;

    /// Runs a warm-up batch (on the model manager's thread, before the model serves) on every
    /// part that will serve requests: a backend with one session per shard runs it on each.
    fn warm_up(&self, inputs: &[Tensor<'_>]) -> Result<(), ModelError> {
        self.infer(inputs).map(drop)
    }

    /// Checks one request's inputs beyond what the metadata says (a range of values the backend
    /// computes in, say). An error is the client's (400); the message names the input. Called
    /// per request before batching, so that one bad request never fails a batch.
    fn check_request(&self, _inputs: &[Tensor<'_>]) -> Result<(), String> {
        Ok(())
    }

    /// What computes it: `rten` or `onnxruntime` for ONNX models, `builtin` for friday's own.
    /// Shown in the log, the model configuration (`parameters.runtime`) and the repository index.
    fn runtime(&self) -> &'static str {
        "builtin"
    }

    /// For a model that writes text token by token: the part the shard's decoder drives. Such a
    /// model answers `generate` and `generate_stream`, not `infer` (Triton's decoupled models).
    fn generative(&self) -> Option<&dyn Generative> {
        None
    }
}

/// A model that writes text token by token, many responses to one request (Triton calls such
/// models decoupled). The shard's decoder ([`crate::generate::Decoder`]) feeds every running
/// sequence one token per step, all in one call, so requests join and leave the batch at token
/// boundaries (continuous batching). Each sequence carries a state of [`Generative::state_size`]
/// floats between steps (a recurrent state, a cache): the model reads and updates it and keeps
/// nothing per request itself.
pub trait Generative: Send + Sync {
    /// The prompt's tokens, never empty (a model starts an empty prompt with a token of its
    /// own). Text the vocabulary lacks maps to tokens it has.
    fn tokenize(&self, text: &str) -> Vec<u32>;

    /// Appends the bytes token `t` stands for.
    fn detokenize(&self, t: u32, out: &mut Vec<u8>);

    /// Tokens in the vocabulary: the width of a row of logits.
    fn vocab_size(&self) -> usize;

    /// Floats of one sequence's state; a new sequence's state is all zeros.
    fn state_size(&self) -> usize;

    /// One step for a batch of `tokens.len()` sequences: feeds sequence `i` token `tokens[i]`,
    /// updates its state (row `i` of `states`, `state_size` floats) and writes the logits of
    /// its next token into row `i` of `logits` (`vocab_size` floats). `scratch` is the caller's,
    /// kept between calls so a step allocates nothing.
    fn forward(
        &self,
        tokens: &[u32],
        states: &mut [f32],
        logits: &mut [f32],
        scratch: &mut Vec<f32>,
    );
}

/// Reads a little-endian `i32` tensor (the data may be unaligned: it can sit anywhere in a read
/// buffer).
pub(crate) fn i32_values<'t>(t: &'t Tensor<'_>) -> impl Iterator<Item = i32> + 't {
    t.data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("chunks_exact yields 4 bytes")))
}
