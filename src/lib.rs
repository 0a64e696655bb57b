//! friday: a thread-per-core KServe v2 inference server for latency-critical CPU inference.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`cli`] | the command line (clap): `friday serve`, flags, `--check-config` |
//! | [`doctor`] | the host preflight: `friday doctor`, and the checks `serve` runs before any shard starts |
//! | [`config`] | the one config tree: TOML → serde → CLI overrides → [`config::Config::validate`] |
//! | [`error`] | request errors and the one mapping from error to HTTP status; startup errors that name their fix |
//! | [`topology`] | which CPUs the process may run on, and the shard plan (one CPU per shard) |
//! | [`telemetry`] | the tracing subscriber (text or JSON) |
//! | [`tensor`] | the domain types every layer shares: [`tensor::DataType`], [`tensor::Tensor`] |
//! | [`http`] | sans-I/O HTTP/1.1: request head and body framing, response encoding |
//! | [`protocol`] | sans-I/O KServe v2: routes, infer request decoding (JSON and binary), response encoding, metadata |
//! | [`model`] | the [`model::Model`] trait, the built-in models, the ONNX backend (rten), the repository and `config.pbtxt`, the model manager's state, the registry of what this server serves and how |
//! | [`batch`] | sans-I/O dynamic batching: the policy state machine, joining and splitting batches |
//! | [`generate`] | generation without I/O: the continuous batcher (decoder) that runs generative models a token per step, sequences (stop strings, released text), sampling |
//! | [`stats`] | per-shard statistics (Triton's statistics extension), merged on read |
//! | [`cache`] | the per-shard response cache: exact keys, a byte bound with scan-resistant eviction, answers stored as sent |
//! | [`metrics`] | per-shard HDR histograms and counters, rendered for Prometheus, merged on scrape |
//! | [`service`] | the request handler: one decoded HTTP request in, one encoded response out; knows no I/O engine |
//! | [`bench`] | `friday bench`: the open-loop load generator (mio client threads, reports, plots) |
//! | [`runtime`] | everything that touches threads and the kernel: pinned shard loops, the io_uring and epoll engines, listeners, connections, buffers, batchers, workers, the mesh, drain |
//!
//! # Model
//!
//! One shard per CPU. A shard is one thread pinned to its CPU running a synchronous event loop
//! over one I/O engine: an io_uring ring (`SINGLE_ISSUER`, `DEFER_TASKRUN`; one
//! `io_uring_enter` per loop turn submits everything the turn asked for and waits for what
//! completed), or epoll where io_uring is unavailable. It owns its `SO_REUSEPORT` listener (the
//! kernel spreads new connections across shards), every connection it accepted (each a state
//! machine over the sans-I/O decoders), the buffers those connections read into and write from,
//! one batcher per model (the batching policy and its queue), its response cache, its statistics
//! and metrics and its drain state. There are no futures and no wakers on the request path, and no timer object per
//! request: deadlines live in the batching policy and in one sweep over the connections. Per-shard
//! state is built on the shard's thread and never leaves it. A request is parsed, decoded,
//! queued, batched, run and answered on the shard that accepted its connection; requests never
//! cross cores. When an inline model is idle, a request skips the queue and runs at once on the
//! bytes it arrived in.
//!
//! Where a batch runs is per model: `inline`, on the shard's thread between I/O turns, or
//! `worker`, on a thread pinned to the shard's CPU at `SCHED_IDLE`, so the kernel preempts it
//! whenever the shard has I/O to serve.
//!
//! A generative model (one that streams tokens) has no batcher but a decoder per shard: a running
//! batch of sequences that takes one step per loop turn, between I/O turns, each sequence a token
//! per step (continuous batching). A connection streaming its tokens (`generate_stream`, server-
//! sent events in chunked coding) takes its sequence out of the running batch while more than
//! `generate.stream_buffer_bytes` wait for its client, and a client that leaves ends its sequence
//! before the next step.
//!
//! Models are `Arc<dyn Model>`: loaded once, shared read-only by every shard, called with `&self`.
//! What is served is one generation of the [`model::ModelRegistry`], built by the model manager
//! (a control-plane thread at `SCHED_IDLE`) and published to every shard, which switches between
//! two loop turns: each served version is a slot with its own batcher, statistics and metrics on
//! every shard, created when it appears and dropped after its last request once it is gone.
//!
//! Data crosses threads only by these paths, each announced by the receiving shard's doorbell
//! (an eventfd its engine watches):
//! - the control thread (signals) tells each shard to drain ([`runtime::mesh::ShardMsg::Drain`]);
//! - the model manager publishes a new generation to every shard
//!   ([`runtime::mesh::ShardMsg::Publish`], acknowledged), and answers the repository calls a
//!   shard forwards to it ([`runtime::mesh::ManagerMsg`] /
//!   [`runtime::mesh::ShardMsg::RepositoryReply`]);
//! - a shard that answers `GET …/stats` or `GET /metrics` asks its peers for their numbers and
//!   merges the snapshots ([`runtime::mesh::ShardMsg::SnapshotRequest`] /
//!   [`runtime::mesh::ShardMsg::SnapshotReply`]), through bounded crossbeam channels;
//! - a shard and its model workers hand batches back and forth through two wait-free rtrb rings,
//!   a park token and the doorbell ([`runtime::worker`]); the worker shares the shard's CPU.
//!
//! # Invariants
//!
//! - No lock, no shared atomic and no cross-core message on the request path; a model placed on a
//!   worker adds only the worker handoff above, on the same CPU.
//! - Nothing blocks a reactor: no blocking syscall, no sleeping, no waiting on another shard while
//!   holding a connection hostage (the stats gather is bounded and times out).
//! - Every queue is bounded: connections per shard, header bytes, body bytes, requests waiting per
//!   model (`max_queue_size`, 429 beyond it), sequences per generative model
//!   (`generate.max_sequences_per_shard`), output waiting per stream, worker rings, mesh channels,
//!   concurrent gathers.
//! - No input can panic a shard: every decoder returns an error for every byte string.
//! - The protocol core ([`http`], [`protocol`], [`service`], [`model`]) knows nothing of the I/O
//!   engine; only [`runtime`] does, and inside it only [`runtime::engine`] names io_uring or epoll.
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod batch;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod generate;
pub mod http;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod telemetry;
pub mod tensor;
pub mod topology;

/// The server name reported by `GET /v2`.
pub const SERVER_NAME: &str = "friday";
/// The server version reported by `GET /v2`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
