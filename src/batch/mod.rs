//! Dynamic batching, sans I/O: the policy ([`policy`]) that decides which queued requests run
//! together and when, and the tensor plumbing ([`assemble`]) that joins requests into one batch
//! and splits a batch's outputs back per request.
//!
//! Nothing here knows about the I/O engine, threads or sockets; the runtime drives it
//! (`runtime::batcher`). Every decision takes the current time as an argument.

pub mod assemble;
pub mod policy;

pub use policy::{BatchQueue, Batchable, PolicyConfig, Step, DEADLINE_GUARD};
