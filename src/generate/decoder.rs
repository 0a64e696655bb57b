//! One shard's continuous batcher for one generative model.
//!
//! Sequences join the running batch when admitted and leave it when they end, at token
//! boundaries: every [`Decoder::step`] feeds each sequence that has room one token, all in one
//! call to the model, so a step's cost is shared by everyone in it and a new request never waits
//! for a batch to finish. A sequence whose connection has too much unsent output sits steps out
//! (no room) until the client catches up; one whose client left, or whose deadline passed, ends
//! before the next step. Admission is bounded: past `max_sequences` a request is refused (429)
//! at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::{sampler::Sampler, Finish, GenerateParams, Sequence};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{ModelMetrics, Outcome};
use crate::model::Model;

/// Extra passes a step gives the sequences still reading their prompt (each a prompt token).
/// Bounded, so a long prompt spreads over steps rather than holding the shard: 32 passes at
/// batch 1 take about 3 ms on tinylm.
const PREFILL_PASSES_PER_STEP: usize = 32;

/// One admitted request.
struct Running {
    /// The connection to wake when it has output.
    conn: usize,
    seq: Sequence,
    sampler: Sampler,
    /// The model's state for this sequence.
    state: Vec<f32>,
    /// Its connection can take more output.
    room: bool,
    /// Its connection streams what each step releases; otherwise it waits for the end.
    stream: bool,
    /// When its request arrived, and when it was admitted.
    received: Instant,
    admitted: Instant,
    /// Its end was recorded and its connection woken for it (once).
    announced: bool,
    deadline: Option<Instant>,
    last_token: Option<Instant>,
}

impl Running {
    /// Records how it ended and wakes its connection for it, once.
    fn announce(&mut self, metrics: Option<&ModelMetrics>, now: Instant, ready: &mut Vec<usize>) {
        if std::mem::replace(&mut self.announced, true) {
            return;
        }
        if let Some(why) = self.seq.finish() {
            record_end(metrics, why, self.received, now);
        }
        ready.push(self.conn);
    }
}

/// What a connection takes from its sequence.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// Why the sequence ended, once it has.
    pub ended: Option<Finish>,
    /// Tokens generated so far.
    pub tokens: usize,
    /// When its request arrived.
    pub received: Instant,
    /// When it joined the running batch.
    pub admitted: Instant,
}

impl Taken {
    /// What a connection whose sequence (or decoder) is gone takes: a failure.
    pub fn gone() -> Self {
        let now = Instant::now();
        Taken {
            ended: Some(Finish::Failed(
                "the request's sequence is gone from this shard; this is a bug in friday".into(),
            )),
            tokens: 0,
            received: now,
            admitted: now,
        }
    }
}

/// One generative model's running batch on one shard.
pub struct Decoder {
    model: Arc<dyn Model>,
    running: Slab<Running>,
    max_sequences: usize,
    /// Scratch, kept between steps.
    batch: Vec<usize>,
    tokens: Vec<u32>,
    states: Vec<f32>,
    logits: Vec<f32>,
    scratch: Vec<f32>,
    order: Vec<u32>,
    bytes: Vec<u8>,
}

impl Decoder {
    /// A decoder for `model`, if it is generative, admitting at most `max_sequences` at once.
    pub fn new(model: Arc<dyn Model>, max_sequences: usize) -> Option<Self> {
        model.generative()?;
        Some(Decoder {
            model,
            running: Slab::with_capacity(max_sequences.min(1024)),
            max_sequences: max_sequences.max(1),
            batch: Vec::new(),
            tokens: Vec::new(),
            states: Vec::new(),
            logits: Vec::new(),
            scratch: Vec::new(),
            order: Vec::new(),
            bytes: Vec::new(),
        })
    }

    fn generative(&self) -> &dyn crate::model::Generative {
        self.model
            .generative()
            .expect("a decoder is made only for a generative model")
    }

    /// Admits a request from connection `conn`: it joins the running batch at the next step.
    /// `stream`: the connection takes the text as it is released (it is woken for it), rather
    /// than all of it at the end. Returns its ticket, or 429 when `max_sequences` run already.
    pub fn admit(
        &mut self,
        conn: usize,
        params: &GenerateParams,
        stream: bool,
        received: Instant,
    ) -> Result<usize, ApiError> {
        if self.running.len() >= self.max_sequences {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' is generating for {} requests on this shard \
                     (generate.max_sequences_per_shard); retry later",
                    self.model.metadata().name,
                    self.running.len()
                ),
            ));
        }
        let g = self.generative();
        let prompt = g.tokenize(&params.prompt);
        let state = vec![0.0; g.state_size()];
        let seed = params.seed.unwrap_or_else(|| fastrand::u64(..));
        Ok(self.running.insert(Running {
            conn,
            seq: Sequence::new(prompt, params),
            sampler: Sampler::new(params.temperature, params.top_k, seed),
            state,
            room: true,
            stream,
            received,
            admitted: Instant::now(),
            announced: false,
            deadline: params.timeout.map(|t| received + t),
            last_token: None,
        }))
    }

    /// Sequences admitted and not yet removed.
    pub fn active(&self) -> usize {
        self.running.len()
    }

    /// Whether a step would feed anyone: the shard keeps stepping while this holds.
    pub fn runnable(&self) -> bool {
        self.running
            .iter()
            .any(|(_, r)| r.room && r.seq.finish().is_none())
    }

    /// Whether it holds no sequence (a retiring model's decoder may then go).
    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether ticket's connection can take more output; without room its sequence sits steps
    /// out.
    pub fn set_room(&mut self, ticket: usize, room: bool) {
        if let Some(r) = self.running.get_mut(ticket) {
            r.room = room;
        }
    }

    /// Whether ticket's sequence has ended (a gone ticket counts as ended).
    pub fn ended(&self, ticket: usize) -> bool {
        self.running
            .get(ticket)
            .is_none_or(|r| r.seq.finish().is_some())
    }

    /// Moves what ticket's sequence released into `out`; says whether and why it ended.
    pub fn take(&mut self, ticket: usize, out: &mut Vec<u8>) -> Taken {
        match self.running.get_mut(ticket) {
            Some(r) => {
                r.seq.take_output(out);
                Taken {
                    ended: r.seq.finish().cloned(),
                    tokens: r.seq.produced(),
                    received: r.received,
                    admitted: r.admitted,
                }
            }
            None => Taken::gone(),
        }
    }

    /// Forgets ticket's sequence (its connection has answered).
    pub fn remove(&mut self, ticket: usize) {
        self.running.try_remove(ticket);
    }

    /// Ends the sequences whose client left (`gone(conn)`) or whose deadline passed, then runs
    /// one step for every sequence that has room. Connections with something to take are pushed
    /// to `ready`. Sequences still reading their prompt take up to `PREFILL_PASSES_PER_STEP`
    /// more tokens of it. Returns how many sequences the step fed.
    pub fn step<G: Fn(usize) -> bool>(
        &mut self,
        now: Instant,
        gone: G,
        ready: &mut Vec<usize>,
        metrics: Option<&ModelMetrics>,
    ) -> usize {
        self.batch.clear();
        for (ticket, r) in self.running.iter_mut() {
            if r.seq.finish().is_none() {
                if gone(r.conn) {
                    r.seq.end(Finish::Cancelled);
                } else if r.deadline.is_some_and(|d| now >= d) {
                    r.seq.end(Finish::TimedOut);
                }
            }
            if r.seq.finish().is_some() {
                // Ended now, or ended before it could run (nothing to generate).
                r.announce(metrics, now, ready);
            } else if r.room {
                self.batch.push(ticket);
            }
        }
        if self.batch.is_empty() {
            return 0;
        }
        let fed = self.batch.len();
        if !self.pass(ready, metrics) {
            return fed;
        }
        // Prompts go in faster than one token per step: the sequences still in their prompt
        // take more passes among themselves (an RNN reads its prompt a token at a time), so a
        // new request's first token comes within a step or two, not a step per prompt token.
        for _ in 0..PREFILL_PASSES_PER_STEP {
            let running = &self.running;
            self.batch
                .retain(|&t| running[t].seq.in_prompt() && running[t].seq.finish().is_none());
            if self.batch.is_empty() || !self.pass(ready, metrics) {
                break;
            }
        }
        fed
    }

    /// One forward pass over the sequences in `self.batch` (none of them ended): each takes its
    /// next token; those past their prompt sample one. Returns false if the model panicked
    /// (every sequence in the pass has then ended with a failure).
    fn pass(&mut self, ready: &mut Vec<usize>, metrics: Option<&ModelMetrics>) -> bool {
        let g = self
            .model
            .generative()
            .expect("a decoder is made only for a generative model");
        let (n, width, vocab) = (self.batch.len(), g.state_size(), g.vocab_size());
        self.tokens.clear();
        self.states.clear();
        for &t in &self.batch {
            let r = &self.running[t];
            self.tokens.push(r.seq.next_input());
            self.states.extend_from_slice(&r.state);
        }
        self.logits.resize(n * vocab, 0.0);
        let start = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            g.forward(
                &self.tokens,
                &mut self.states,
                &mut self.logits,
                &mut self.scratch,
            )
        }));
        let end = Instant::now();
        if let Some(m) = metrics {
            m.batch((end - start).as_nanos() as u64, n);
        }
        let mut generated = 0;
        for (i, &t) in self.batch.iter().enumerate() {
            let r = &mut self.running[t];
            if ran.is_err() {
                r.seq.end(Finish::Failed(format!(
                    "model '{}' failed while generating",
                    self.model.metadata().name
                )));
                r.announce(metrics, end, ready);
                continue;
            }
            r.state
                .copy_from_slice(&self.states[i * width..(i + 1) * width]);
            if !r.seq.fed() {
                continue;
            }
            let token = r
                .sampler
                .pick(&self.logits[i * vocab..(i + 1) * vocab], &mut self.order);
            self.bytes.clear();
            g.detokenize(token, &mut self.bytes);
            r.seq.push(token, &self.bytes);
            generated += 1;
            if let Some(m) = metrics {
                match r.last_token {
                    None => m.first_token_nanos(nanos(end - r.received)),
                    Some(last) => m.inter_token_nanos(nanos(end - last)),
                }
            }
            r.last_token = Some(end);
            if r.seq.finish().is_some() {
                r.announce(metrics, end, ready);
            } else if r.stream && r.seq.has_output() {
                ready.push(r.conn);
            }
        }
        if let Some(m) = metrics {
            m.tokens(generated as u64);
        }
        if ran.is_err() {
            tracing::error!(model = %self.model.metadata().name, "a generation step panicked");
        }
        ran.is_ok()
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Records how a sequence ended, once.
fn record_end(metrics: Option<&ModelMetrics>, why: &Finish, received: Instant, now: Instant) {
    let Some(m) = metrics else { return };
    m.outcome(match why {
        Finish::Stop | Finish::Length => Outcome::Success,
        Finish::Cancelled => Outcome::Cancelled,
        Finish::TimedOut => Outcome::Timeout,
        Finish::Failed(_) => Outcome::Failure,
    });
    m.request_nanos(nanos(now.saturating_duration_since(received)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelMetadata, TinyLm};

    fn params(seed: u64, max_tokens: usize) -> GenerateParams {
        GenerateParams {
            prompt: "The harbor".into(),
            max_tokens,
            seed: Some(seed),
            ..GenerateParams::default()
        }
    }

    /// Steps until ticket ends; returns its text.
    fn drain(d: &mut Decoder, ticket: usize, now: Instant) -> (String, Finish) {
        let mut text = Vec::new();
        let mut ready = Vec::new();
        loop {
            let taken = d.take(ticket, &mut text);
            if let Some(why) = taken.ended {
                return (String::from_utf8(text).unwrap(), why);
            }
            d.step(now, |_| false, &mut ready, None);
        }
    }

    #[test]
    fn a_sequence_writes_the_same_text_alone_or_in_a_batch() {
        let now = Instant::now();
        let mut alone = Decoder::new(Arc::new(TinyLm::new()), 8).unwrap();
        let t = alone.admit(0, &params(7, 40), false, now).unwrap();
        let (text, why) = drain(&mut alone, t, now);
        assert_eq!(why, Finish::Length);
        assert_eq!(text.len(), 40);

        // The same request, with others joining and leaving around it at token boundaries.
        let mut busy = Decoder::new(Arc::new(TinyLm::new()), 8).unwrap();
        let mut ready = Vec::new();
        let a = busy.admit(1, &params(1, 5), true, now).unwrap();
        busy.step(now, |_| false, &mut ready, None);
        let t = busy.admit(0, &params(7, 40), true, now).unwrap();
        for _ in 0..3 {
            busy.step(now, |_| false, &mut ready, None);
        }
        let _b = busy.admit(2, &params(2, 100), true, now).unwrap();
        busy.remove(a);
        let (busy_text, _) = drain(&mut busy, t, now);
        assert_eq!(busy_text, text);
    }

    /// A generative model whose every step panics.
    struct Broken(ModelMetadata);

    impl Model for Broken {
        fn metadata(&self) -> &ModelMetadata {
            &self.0
        }
        fn infer<'a>(
            &self,
            _: &'a [crate::tensor::Tensor<'_>],
        ) -> Result<crate::model::Outputs<'a>, crate::model::ModelError> {
            unreachable!()
        }
        fn generative(&self) -> Option<&dyn crate::model::Generative> {
            Some(self)
        }
    }

    impl crate::model::Generative for Broken {
        fn tokenize(&self, text: &str) -> Vec<u32> {
            vec![0; text.len().max(1)]
        }
        fn detokenize(&self, _: u32, out: &mut Vec<u8>) {
            out.push(b'x');
        }
        fn vocab_size(&self) -> usize {
            2
        }
        fn state_size(&self) -> usize {
            1
        }
        fn forward(&self, _: &[u32], _: &mut [f32], _: &mut [f32], _: &mut Vec<f32>) {
            panic!("broken model");
        }
    }

    #[test]
    fn a_panicking_model_ends_each_sequence_once() {
        let now = Instant::now();
        let meta = TinyLm::new().metadata().clone();
        let mut d = Decoder::new(Arc::new(Broken(meta)), 4).unwrap();
        let a = d.admit(1, &params(1, 10), true, now).unwrap();
        let b = d.admit(2, &params(1, 10), false, now).unwrap();
        let mut ready = Vec::new();
        d.step(now, |_| false, &mut ready, None);
        ready.sort();
        assert_eq!(ready, vec![1, 2], "each connection woken once");
        for t in [a, b] {
            assert!(matches!(
                d.take(t, &mut Vec::new()).ended,
                Some(Finish::Failed(_))
            ));
        }
        ready.clear();
        d.step(now, |_| false, &mut ready, None);
        assert!(ready.is_empty(), "an ended sequence is announced once");
    }

    #[test]
    fn a_sequence_with_nothing_to_generate_ends_at_the_first_step() {
        let now = Instant::now();
        let mut d = Decoder::new(Arc::new(TinyLm::new()), 4).unwrap();
        let t = d.admit(7, &params(1, 0), true, now).unwrap();
        let mut ready = Vec::new();
        d.step(now, |_| false, &mut ready, None);
        assert_eq!(ready, vec![7]);
        assert_eq!(d.take(t, &mut Vec::new()).ended, Some(Finish::Length));
    }

    #[test]
    fn admission_is_bounded() {
        let now = Instant::now();
        let mut d = Decoder::new(Arc::new(TinyLm::new()), 2).unwrap();
        d.admit(0, &params(1, 5), true, now).unwrap();
        d.admit(1, &params(1, 5), true, now).unwrap();
        let e = d.admit(2, &params(1, 5), true, now).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
    }

    #[test]
    fn a_sequence_without_room_sits_steps_out() {
        let now = Instant::now();
        let mut d = Decoder::new(Arc::new(TinyLm::new()), 4).unwrap();
        let t = d.admit(0, &params(1, 1000), true, now).unwrap();
        let mut ready = Vec::new();
        for _ in 0..20 {
            d.step(now, |_| false, &mut ready, None);
        }
        let produced = d.take(t, &mut Vec::new()).tokens;
        assert!(produced > 0);
        d.set_room(t, false);
        assert!(!d.runnable());
        for _ in 0..20 {
            assert_eq!(d.step(now, |_| false, &mut ready, None), 0);
        }
        assert_eq!(d.take(t, &mut Vec::new()).tokens, produced);
    }

    #[test]
    fn a_gone_client_or_a_deadline_ends_its_sequence_before_the_next_token() {
        let now = Instant::now();
        let mut d = Decoder::new(Arc::new(TinyLm::new()), 4).unwrap();
        let gone = d.admit(3, &params(1, 1000), true, now).unwrap();
        let late = d
            .admit(
                4,
                &GenerateParams {
                    timeout: Some(Duration::from_millis(5)),
                    ..params(1, 1000)
                },
                true,
                now,
            )
            .unwrap();
        let mut ready = Vec::new();
        d.step(now, |_| false, &mut ready, None);
        ready.clear();
        let later = now + Duration::from_millis(10);
        assert_eq!(d.step(later, |c| c == 3, &mut ready, None), 0);
        assert_eq!(d.take(gone, &mut Vec::new()).ended, Some(Finish::Cancelled));
        assert_eq!(d.take(late, &mut Vec::new()).ended, Some(Finish::TimedOut));
        assert!(ready.contains(&3) && ready.contains(&4));
        d.remove(gone);
        d.remove(late);
        assert!(d.is_idle());
    }
}
