//! One connection: read bytes, answer every complete request in order, write, repeat.
//!
//! Pipelined requests are answered in order because they are answered one after another into one
//! output buffer, which is flushed once when no complete request is left (or when it grows past
//! [`FLUSH_THRESHOLD_BYTES`]). Buffers come from the shard's pools and go back on close. A framing
//! error answers 400/413/431/501 and closes the connection, since the byte stream can no longer
//! be trusted; a bad request body only fails that request.
//!
//! This task must never block the reactor and never hold a request hostage: the only await points
//! are the socket read, the socket write, and the bounded statistics gather.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::buffers::RETAIN_MAX_BYTES;
use super::conn_table::{ConnHandle, Phase};
use super::shard::Shard;
use crate::error::ApiError;
use crate::http::{Body, Decoded, Method, RequestDecoder, Responder, CONTINUE_100};
use crate::service::{Action, Request};

/// Flush the output buffer mid-pipeline once it holds this much.
const FLUSH_THRESHOLD_BYTES: usize = 64 << 10;
/// After a framing error, how long to keep reading (and discarding) before closing.
const LINGER_TIME: Duration = Duration::from_millis(500);
/// After a framing error, how many bytes to read (and discard) at most before closing.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// A connection's read buffer: `buf[start..end]` is received and not yet consumed. `buf` is fully
/// initialized (its length is its capacity) so reads can go straight into `buf[end..]`.
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new(mut buf: Vec<u8>) -> Self {
        let cap = buf.capacity();
        buf.resize(cap, 0);
        ReadBuf {
            buf,
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room to read: afterwards `buf[end..]` is non-empty and, from `start`, the buffer can
    /// hold at least `need` bytes.
    fn make_room(&mut self, need: usize, initial: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > RETAIN_MAX_BYTES && need <= initial {
                // One large request grew the buffer; do not keep its memory for small ones.
                self.buf = vec![0; initial];
            }
        }
        let need = need.max(self.end - self.start + 1);
        if self.start > 0 && self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.start < need {
            let len = self.buf.len();
            let new_len = if need > len * 2 { need } else { len * 2 };
            self.buf.resize(new_len, 0);
        }
    }
}

/// Serves one accepted connection until the peer closes, an error closes it, or the shard drains.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream, conn: ConnHandle) {
    let mut read = ReadBuf::new(shard.read_pool.take());
    let mut write = shard.write_pool.take();
    let mut scratch = shard.write_pool.take();
    let mut dechunked = Vec::new();
    let result = run(
        &shard,
        &mut stream,
        &conn,
        &mut read,
        &mut write,
        &mut scratch,
        &mut dechunked,
    )
    .await;
    if let Err(e) = result {
        tracing::debug!(shard = shard.id, error = %e, "connection ended with an error");
    }
    shard.read_pool.give(read.buf);
    shard.write_pool.give(write);
    shard.write_pool.give(scratch);
    // The entry leaves the table before the socket closes (the stream drops after `conn`), so the
    // sweeper never shuts down a file descriptor that was reused.
    drop(conn);
    drop(stream);
}

async fn run(
    shard: &Shard,
    stream: &mut TcpStream,
    conn: &ConnHandle,
    read: &mut ReadBuf,
    write: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    dechunked: &mut Vec<u8>,
) -> io::Result<()> {
    let mut decoder = RequestDecoder::new(shard.limits);
    let mut received = Instant::now();
    loop {
        let mut close = false;
        let mut framing_error = false;
        let mut need = 0;
        // Answer every complete request already buffered.
        loop {
            let decoded = decoder.decode(read.pending(), dechunked);
            let msg = match decoded {
                Ok(Decoded::Complete(msg)) => msg,
                Ok(Decoded::Incomplete {
                    send_continue,
                    need: n,
                }) => {
                    if send_continue {
                        write.extend_from_slice(CONTINUE_100);
                    }
                    need = n;
                    break;
                }
                Err(e) => {
                    let date = shard.service.date();
                    Responder::new(write, scratch, &date, false, false).error(&ApiError::from(e));
                    close = true;
                    framing_error = true;
                    break;
                }
            };
            conn.state.enter(Phase::Busy, received);
            let bytes = &read.buf[read.start..read.start + msg.consumed];
            let head = &msg.head;
            let body: &[u8] = match &msg.body {
                Body::Empty => &[],
                Body::InBuffer(range) => &bytes[range.clone()],
                Body::Dechunked => dechunked,
            };
            let request = Request {
                method: head.method,
                // httparse admits only visible ASCII in a request target.
                path: std::str::from_utf8(&bytes[head.path.clone()]).unwrap_or(""),
                body,
                inference_header: head.inference_header,
                received,
            };
            let keep_alive = head.keep_alive && !shard.service.is_draining();
            let date = shard.service.date();
            let mut resp = Responder::new(
                write,
                scratch,
                &date,
                keep_alive,
                head.method == Method::Head,
            );
            if let Action::GatherStats(query) = shard.service.handle(&request, &mut resp) {
                match shard.mesh.gather_stats(&shard.service).await {
                    Ok(merged) => shard.service.answer_stats(query, &merged, &mut resp),
                    Err(e) => resp.error(&e),
                }
            }
            let keep_open = resp.keep_alive();
            read.start += msg.consumed;
            if !keep_open {
                close = true;
                break;
            }
            if write.len() >= FLUSH_THRESHOLD_BYTES {
                flush(stream, write).await?;
            }
            // A client pipelining thousands of requests must not starve the shard's other tasks.
            glommio::yield_if_needed().await;
        }
        flush(stream, write).await?;
        if framing_error {
            linger(stream, &mut read.buf).await;
        }
        if close {
            return Ok(());
        }
        read.make_room(need, shard.read_pool_initial);
        let phase = match (read.start == read.end, decoder.is_idle()) {
            (true, true) => Phase::Idle,
            (false, true) => Phase::Head,
            (_, false) => Phase::Body,
        };
        if phase == Phase::Idle && shard.service.is_draining() {
            return Ok(());
        }
        conn.state.enter(phase, received);
        let n = stream.read(&mut read.buf[read.end..]).await?;
        if n == 0 {
            return Ok(());
        }
        read.end += n;
        received = Instant::now();
    }
}

async fn flush(stream: &mut TcpStream, write: &mut Vec<u8>) -> io::Result<()> {
    if !write.is_empty() {
        stream.write_all(write).await?;
        write.clear();
        if write.capacity() > RETAIN_MAX_BYTES {
            write.shrink_to(RETAIN_MAX_BYTES);
        }
    }
    Ok(())
}

/// After a framing error the client may still be sending. Closing a socket with unread bytes
/// makes the kernel answer with a reset, which can destroy the error response before the client
/// reads it; so shut the write side and read and discard for a bounded time first (what nginx
/// calls a lingering close).
async fn linger(stream: &mut TcpStream, buf: &mut [u8]) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let _ = glommio::timer::timeout(LINGER_TIME, async {
        let mut total = 0;
        while let Ok(n) = stream.read(buf).await {
            total += n;
            if n == 0 || total > LINGER_MAX_BYTES {
                break;
            }
        }
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_room_compacts_then_grows() {
        let mut r = ReadBuf::new(Vec::with_capacity(8));
        assert_eq!(r.buf.len(), 8);
        r.buf[..8].copy_from_slice(b"abcdefgh");
        r.start = 6;
        r.end = 8;
        r.make_room(4, 8);
        assert_eq!((r.start, r.end), (0, 2));
        assert_eq!(r.pending(), b"gh");
        r.make_room(20, 8);
        assert!(r.buf.len() >= 20);
        assert_eq!(r.pending(), b"gh");
        r.start = r.end;
        r.make_room(1, 8);
        assert_eq!((r.start, r.end), (0, 0));
    }

    #[test]
    fn make_room_always_leaves_space_to_read() {
        let mut r = ReadBuf::new(Vec::with_capacity(4));
        r.end = 4;
        r.make_room(0, 4);
        assert!(r.buf.len() > r.end);
    }
}
