//! `tinylm`: a small generative model built in, so `generate_stream` works on a fresh server.
//!
//! A character-level recurrent decoder: 96 tokens (newline and printable ASCII), an embedding,
//! [`LAYERS`] GRU layers of [`HIDDEN`] units and an output head, about 0.9 MB of weights drawn
//! from a fixed seed when the server starts (nothing is downloaded or stored). Its logits are the
//! head's output plus the log-probabilities of the next character after the current one in a
//! short text shipped with friday (`tinylm.txt`), so it writes letter-like text rather than
//! noise. It is not a language model anyone should read; it is one whose every token costs real
//! matrix arithmetic (about 0.2 M multiply-adds), computed for a whole batch of sequences in one
//! call, which is what continuous batching and the response streamer need to be measured.
//!
//! Inputs and outputs follow Triton's generate extension as TensorRT-LLM and vLLM models use it:
//! `text_input` (BYTES) in, `text_output` (BYTES) out; sampling comes from the request's
//! `max_tokens`, `temperature`, `top_k`, `seed` and `stop`.

use super::{Generative, Model, ModelError, ModelMetadata, Outputs, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// Units per recurrent layer.
pub const HIDDEN: usize = 128;
/// Recurrent layers.
pub const LAYERS: usize = 2;
/// Tokens: newline, then printable ASCII (space to `~`).
pub const VOCAB: usize = 96;
/// Seed of the weights.
const WEIGHT_SEED: u64 = 0x7197_11a0;
/// How much the head's output adds to the text's character statistics.
const HEAD_WEIGHT: f32 = 0.5;
/// Count every character pair starts with, so pairs the text lacks stay possible but rare.
const BIGRAM_SMOOTHING: f32 = 0.02;

/// The text whose character statistics shape what tinylm writes.
const CORPUS: &str = include_str!("tinylm.txt");

/// One GRU layer: input and hidden projections for the reset, update and new gates, side by
/// side (`[HIDDEN, 3 * HIDDEN]`, row-major), and their biases.
struct Gru {
    wx: Vec<f32>,
    wh: Vec<f32>,
    bx: Vec<f32>,
    bh: Vec<f32>,
}

/// The tinylm model.
pub struct TinyLm {
    metadata: ModelMetadata,
    embed: Vec<f32>,
    layers: Vec<Gru>,
    /// `[HIDDEN, VOCAB]`.
    head: Vec<f32>,
    /// `[VOCAB, VOCAB]`: log P(next | current) in the corpus, smoothed (`BIGRAM_SMOOTHING`).
    bigram: Vec<f32>,
}

impl Default for TinyLm {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyLm {
    /// The model, its weights drawn from the fixed seed.
    pub fn new() -> Self {
        let mut rng = fastrand::Rng::with_seed(WEIGHT_SEED);
        let mut draw = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect()
        };
        let s = 1.0 / (HIDDEN as f32).sqrt();
        let embed = draw(VOCAB * HIDDEN, 1.0);
        let layers = (0..LAYERS)
            .map(|_| Gru {
                wx: draw(HIDDEN * 3 * HIDDEN, s),
                wh: draw(HIDDEN * 3 * HIDDEN, s),
                bx: draw(3 * HIDDEN, s),
                bh: draw(3 * HIDDEN, s),
            })
            .collect();
        let head = draw(HIDDEN * VOCAB, s);
        TinyLm {
            metadata: ModelMetadata {
                name: "tinylm".into(),
                platform: "friday_builtin".into(),
                backend: "tinylm".into(),
                max_batch_size: 0,
                inputs: vec![TensorSpec::new("text_input", DataType::Bytes, &[1])],
                outputs: vec![TensorSpec::new("text_output", DataType::Bytes, &[1])],
            },
            embed,
            layers,
            head,
            bigram: bigram(CORPUS),
        }
    }
}

/// The token of a byte: newline is 0, printable ASCII follows; anything else reads as a space.
fn token_of(b: u8) -> u32 {
    match b {
        b'\n' => 0,
        b' '..=b'~' => (b - b' ') as u32 + 1,
        _ => 1,
    }
}

/// The byte of a token.
fn byte_of(t: u32) -> u8 {
    match t {
        0 => b'\n',
        t => b' ' + (t as u8 - 1),
    }
}

/// log P(next | current) over the corpus's characters, smoothed (`BIGRAM_SMOOTHING`).
fn bigram(corpus: &str) -> Vec<f32> {
    let mut counts = vec![BIGRAM_SMOOTHING; VOCAB * VOCAB];
    let tokens: Vec<u32> = corpus.bytes().map(token_of).collect();
    for w in tokens.windows(2) {
        counts[w[0] as usize * VOCAB + w[1] as usize] += 1.0;
    }
    for row in counts.chunks_mut(VOCAB) {
        let total: f32 = row.iter().sum();
        row.iter_mut().for_each(|c| *c = (*c / total).ln());
    }
    counts
}

/// `c = a · b` for row-major `a` (`m × k`, rows `lda` apart), `b` (`k × n`) and `c` (`m × n`).
fn matmul(m: usize, k: usize, n: usize, a: &[f32], lda: usize, b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= (m - 1) * lda + k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the assert above keeps every element the strides reach inside the slices; `c` is
    // borrowed mutably, so it overlaps neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Generative for TinyLm {
    fn tokenize(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return vec![token_of(b'\n')];
        }
        text.bytes().map(token_of).collect()
    }

    fn detokenize(&self, t: u32, out: &mut Vec<u8>) {
        out.push(byte_of(t));
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn state_size(&self) -> usize {
        LAYERS * HIDDEN
    }

    fn forward(
        &self,
        tokens: &[u32],
        states: &mut [f32],
        logits: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (b, d, width) = (tokens.len(), HIDDEN, LAYERS * HIDDEN);
        assert_eq!(states.len(), b * width);
        assert_eq!(logits.len(), b * VOCAB);
        if b == 0 {
            return;
        }
        // x: [b, d], gx and gh: [b, 3d].
        scratch.resize(b * d + 2 * b * 3 * d, 0.0);
        let (x, gates) = scratch.split_at_mut(b * d);
        let (gx, gh) = gates.split_at_mut(b * 3 * d);
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            let t = (t as usize).min(VOCAB - 1);
            row.copy_from_slice(&self.embed[t * d..(t + 1) * d]);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            matmul(b, d, 3 * d, x, d, &layer.wx, gx);
            matmul(b, d, 3 * d, &states[l * d..], width, &layer.wh, gh);
            for i in 0..b {
                let (gx, gh) = (
                    &gx[i * 3 * d..(i + 1) * 3 * d],
                    &gh[i * 3 * d..(i + 1) * 3 * d],
                );
                let h = &mut states[i * width + l * d..i * width + (l + 1) * d];
                let xi = &mut x[i * d..(i + 1) * d];
                for j in 0..d {
                    let r = sigmoid(gx[j] + layer.bx[j] + gh[j] + layer.bh[j]);
                    let z = sigmoid(gx[d + j] + layer.bx[d + j] + gh[d + j] + layer.bh[d + j]);
                    let n = (gx[2 * d + j]
                        + layer.bx[2 * d + j]
                        + r * (gh[2 * d + j] + layer.bh[2 * d + j]))
                        .tanh();
                    h[j] = (1.0 - z) * n + z * h[j];
                    xi[j] = h[j];
                }
            }
        }
        matmul(b, d, VOCAB, x, d, &self.head, logits);
        for (row, &t) in logits.chunks_exact_mut(VOCAB).zip(tokens) {
            let t = (t as usize).min(VOCAB - 1);
            let prior = &self.bigram[t * VOCAB..(t + 1) * VOCAB];
            for (l, p) in row.iter_mut().zip(prior) {
                *l = *l * HEAD_WEIGHT + p;
            }
        }
    }
}

impl Model for TinyLm {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer<'a>(&self, _inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        Err(ModelError(
            "tinylm is a decoupled (generative) model: use its generate or generate_stream \
             endpoint"
                .into(),
        ))
    }

    fn generative(&self) -> Option<&dyn Generative> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_printable_ascii() {
        let m = TinyLm::new();
        let text = "Hello, world!\n~";
        let mut out = Vec::new();
        for t in m.tokenize(text) {
            assert!((t as usize) < VOCAB);
            m.detokenize(t, &mut out);
        }
        assert_eq!(out, text.as_bytes());
        assert_eq!(
            m.tokenize("é"),
            vec![1, 1],
            "outside the vocabulary reads as spaces"
        );
        assert_eq!(m.tokenize(""), vec![0]);
    }

    #[test]
    fn a_batch_computes_what_each_sequence_computes_alone() {
        let m = TinyLm::new();
        let width = m.state_size();
        let tokens = [5u32, 40, 0];
        let mut scratch = Vec::new();
        let mut states: Vec<f32> = (0..3 * width).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut logits = vec![0.0; 3 * VOCAB];
        let before = states.clone();
        m.forward(&tokens, &mut states, &mut logits, &mut scratch);
        for i in 0..3 {
            let mut s = before[i * width..(i + 1) * width].to_vec();
            let mut l = vec![0.0; VOCAB];
            m.forward(&tokens[i..i + 1], &mut s, &mut l, &mut scratch);
            for (a, b) in s.iter().zip(&states[i * width..(i + 1) * width]) {
                assert!((a - b).abs() < 1e-4, "state {a} vs {b}");
            }
            for (a, b) in l.iter().zip(&logits[i * VOCAB..(i + 1) * VOCAB]) {
                assert!((a - b).abs() < 1e-3, "logit {a} vs {b}");
            }
        }
        assert_ne!(states, before, "the state moves");
    }

    #[test]
    fn the_weights_are_the_same_every_start() {
        let (a, b) = (TinyLm::new(), TinyLm::new());
        assert_eq!(a.head, b.head);
        assert_eq!(a.layers[1].wh, b.layers[1].wh);
    }
}
