//! Sans-I/O KServe v2 / Open Inference Protocol.
//!
//! Owns the protocol's shapes: which path means what ([`routes`]), infer requests in JSON and in
//! the binary tensor extension ([`infer_request`]), infer responses ([`infer_response`]), tensor
//! data as JSON ([`json_data`]) and the metadata documents ([`metadata`]). Pure functions over
//! byte slices: no sockets, no I/O engine, no clocks; every decoder returns an error for bad input
//! and never panics. Kept independent of HTTP framing so a gRPC front end can reuse it.

pub mod generate;
pub mod infer_request;
pub mod infer_response;
pub mod json_data;
pub mod metadata;
pub mod routes;

pub use infer_request::{
    decode_infer_request, decode_infer_request_into, InferRequest, OutputChoice,
};
pub use infer_response::{encode_infer_response, Encoded, LeftOut};
pub use routes::{route, ModelAction, Route};
