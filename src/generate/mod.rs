//! Generation: the continuous batcher that runs generative models token by token, and the pure
//! parts it is built from.
//!
//! | module | what it owns |
//! |---|---|
//! | [`decoder`] | one shard's running batch of sequences for one generative model: admission (bounded), one step for every sequence that has room, cancellation, deadlines |
//! | [`sequence`] | one request's text: prompt cursor, stop strings, what is released to the client |
//! | [`sampler`] | temperature, top-k and seeded draws |
//!
//! Nothing here does I/O. The shard owns a [`decoder::Decoder`] per generative model, runs a
//! step between I/O turns, and hands what each step released to the connections, which stream it
//! (`generate_stream`) or answer once at the end (`generate`). A connection whose client reads
//! slowly takes its sequence out of the running batch (see [`decoder::Decoder::set_room`]) until
//! its send buffer drains, so a slow reader slows only its own stream.

pub mod decoder;
pub mod sampler;
pub mod sequence;

use std::time::Duration;

pub use decoder::Decoder;
pub use sequence::Sequence;

/// Default `max_tokens` (vLLM's).
pub const DEFAULT_MAX_TOKENS: usize = 16;
/// Most tokens one request may ask for.
pub const MAX_TOKENS_LIMIT: usize = 1 << 20;
/// Longest prompt, in bytes.
pub const MAX_PROMPT_BYTES: usize = 64 << 10;
/// Most stop strings, and the longest one.
pub const MAX_STOP_STRINGS: usize = 8;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;

/// What one generate request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The prompt (`text_input`).
    pub prompt: String,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Draw only from the `top_k` likeliest tokens; 0 means all.
    pub top_k: usize,
    /// Seed of the draws; `None` picks one.
    pub seed: Option<u64>,
    /// Generation ends where one of these appears; it is not part of the text.
    pub stop: Vec<String>,
    /// The whole generation must end within this (Triton's `timeout` parameter).
    pub timeout: Option<Duration>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            prompt: String::new(),
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
            timeout: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A stop string appeared (`finish_reason: "stop"`).
    Stop,
    /// `max_tokens` were generated (`finish_reason: "length"`).
    Length,
    /// The client left; nobody is told.
    Cancelled,
    /// Its `timeout` passed.
    TimedOut,
    /// The model failed.
    Failed(String),
}

impl Finish {
    /// The `finish_reason` a client sees, for a sequence that ended normally.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Finish::Stop => Some("stop"),
            Finish::Length => Some("length"),
            _ => None,
        }
    }
}
