//! Errors, split by audience.
//!
//! - [`ApiError`]: what a client did wrong or what went wrong serving it. Its [`ErrorKind`] is the
//!   only thing that decides the HTTP status ([`ErrorKind::status`] is the one mapping); the message
//!   names what was wrong (which input, expected vs got). Messages are built only on the error path.
//! - [`StartupError`]: cold, rich, and always names the fix.
//!
//! This module must never decide a status anywhere but [`ErrorKind::status`].

use std::borrow::Cow;
use std::fmt;

/// What kind of failure a request met; decides the HTTP status and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model (Triton: INVALID_ARG).
    InvalidRequest,
    /// Unknown model, version or path (Triton: NOT_FOUND).
    NotFound,
    /// Known path, wrong HTTP method.
    MethodNotAllowed,
    /// A restricted API without the key it is restricted to (Triton's `--http-restricted-api`).
    Forbidden,
    /// The body is larger than `http.max_body_bytes`.
    PayloadTooLarge,
    /// The request head is larger than `http.max_header_bytes` or has too many headers.
    HeaderTooLarge,
    /// A bounded queue or limit is full; retry later (429 with `Retry-After`).
    Overloaded,
    /// The server is draining or a model is not ready (Triton: UNAVAILABLE).
    Unavailable,
    /// A request's queue deadline (`timeout` parameter or `default_timeout_microseconds`) passed
    /// before it ran (Triton answers UNAVAILABLE).
    TimedOut,
    /// A feature of HTTP/1.1 friday does not implement (e.g. a transfer coding other than chunked).
    NotImplemented,
    /// A bug or a model failure (Triton: INTERNAL).
    Internal,
}

/// Where a failure came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Client,
    /// The server itself (limits, drain, bugs).
    Server,
}

impl ErrorKind {
    /// The HTTP status for this kind. This is the only place statuses are chosen for errors.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Forbidden => 403,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeaderTooLarge => 431,
            ErrorKind::Overloaded => 429,
            ErrorKind::Unavailable | ErrorKind::TimedOut => 503,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Internal => 500,
        }
    }

    /// Whether sending the same request again later can succeed.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::TimedOut
        )
    }

    /// Who is at fault.
    pub const fn source(self) -> ErrorSource {
        match self {
            ErrorKind::Overloaded
            | ErrorKind::Unavailable
            | ErrorKind::TimedOut
            | ErrorKind::Internal => ErrorSource::Server,
            _ => ErrorSource::Client,
        }
    }
}

/// A request-level error: a kind (decides the status) and a message for the `{"error": …}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of failure; decides the status.
    pub kind: ErrorKind,
    /// Human-readable, names what was wrong.
    pub message: Cow<'static, str>,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or does not fit the model.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// 404: unknown model, version or path.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// 503: draining or not ready.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// 500: a bug or a model failure.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// A failure before the server serves anything. Every message names the fix.
#[derive(Debug)]
pub struct StartupError(pub String);

impl StartupError {
    /// A startup error with a message that says what is wrong and how to fix it.
    pub fn new(message: impl Into<String>) -> Self {
        StartupError(message.into())
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_triton() {
        assert_eq!(ApiError::invalid("x").status(), 400);
        assert_eq!(ApiError::not_found("x").status(), 404);
        assert_eq!(ErrorKind::Forbidden.status(), 403);
        assert_eq!(ApiError::unavailable("x").status(), 503);
        assert_eq!(ApiError::internal("x").status(), 500);
        assert_eq!(ErrorKind::Overloaded.status(), 429);
        assert!(ErrorKind::Overloaded.retryable());
        assert!(!ErrorKind::InvalidRequest.retryable());
        assert_eq!(ErrorKind::InvalidRequest.source(), ErrorSource::Client);
    }
}
