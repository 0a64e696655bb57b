//! friday: a thread-per-core KServe v2 inference server for latency-critical CPU inference.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`cli`] | the command line (clap): `friday serve`, flags, `--check-config` |
//! | [`config`] | the one config tree: TOML → serde → CLI overrides → [`config::Config::validate`] |
//! | [`error`] | request errors and the one mapping from error to HTTP status; startup errors that name their fix |
//! | [`topology`] | which CPUs the process may run on, and the shard plan (one CPU per shard) |
//! | [`telemetry`] | the tracing subscriber (text or JSON) |
//! | [`tensor`] | the domain types every layer shares: [`tensor::DataType`], [`tensor::Tensor`] |
//! | [`http`] | sans-I/O HTTP/1.1: request head and body framing, response encoding |
//! | [`protocol`] | sans-I/O KServe v2: routes, infer request decoding (JSON and binary), response encoding, metadata |
//! | [`model`] | the [`model::Model`] trait, the built-in models, the registry of what this server serves |
//! | [`stats`] | per-shard statistics (Triton's statistics extension), merged on read |
//! | [`service`] | the request handler: one decoded HTTP request in, one encoded response out; knows no I/O engine |
//! | [`runtime`] | everything glommio: pinned executors, listeners, connections, buffers, the mesh, drain |
//!
//! # Model
//!
//! One shard per CPU. A shard is one glommio `LocalExecutor` pinned to its CPU; it owns its
//! `SO_REUSEPORT` listener (the kernel spreads new connections across shards), every connection
//! it accepted, the buffers those connections read into and write from, its statistics and its
//! drain state. Per-shard state is `Rc`/`Cell`, so it is `!Send` on purpose: the compiler rejects
//! accidental sharing. A request is parsed, decoded, run through its model and answered on the
//! shard that accepted its connection; requests never cross cores.
//!
//! Models are `Arc<dyn Model>`: loaded once, shared read-only by every shard, called with `&self`.
//!
//! Data crosses cores only through [`runtime::mesh`], and only off the request path:
//! - the control thread (signals) tells each shard to drain ([`runtime::mesh::ShardMsg::Drain`]);
//! - a shard that answers `GET …/stats` asks its peers for their statistics and merges the
//!   snapshots ([`runtime::mesh::ShardMsg::StatsRequest`] / [`runtime::mesh::ShardMsg::StatsReply`]).
//!
//! # Invariants
//!
//! - No lock, no shared atomic and no cross-core message on the request path.
//! - Nothing blocks a reactor: no blocking syscall, no sleeping, no waiting on another shard while
//!   holding a connection hostage (the stats gather is bounded and times out).
//! - Every queue is bounded: connections per shard, header bytes, body bytes, mesh channels,
//!   concurrent stats gathers.
//! - No input can panic a shard: every decoder returns an error for every byte string.
//! - The protocol core ([`http`], [`protocol`], [`service`], [`model`]) knows nothing of glommio;
//!   only [`runtime`] does, so the I/O engine can change without touching them.
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod batch;
pub mod cli;
pub mod config;
pub mod error;
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
