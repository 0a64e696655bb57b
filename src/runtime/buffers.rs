//! Per-shard buffer pools: connections take their buffers here and give them back on close, so
//! a steady stream of short connections allocates nothing after warmup.
//!
//! Bounded twice: at most `MAX_POOLED` buffers wait in a pool, and a buffer that grew past
//! `RETAIN_MAX_BYTES` (one large request) is freed instead of pinning its memory.

use std::cell::{Cell, RefCell};

/// Buffers kept per pool.
const MAX_POOLED: usize = 1024;
/// Largest buffer a pool keeps; larger ones are freed when returned.
pub(crate) const RETAIN_MAX_BYTES: usize = 256 << 10;

/// A pool of byte buffers of one initial size.
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    initial: usize,
    taken: Cell<u64>,
    reused: Cell<u64>,
}

impl BufferPool {
    /// A pool whose fresh buffers hold `initial` bytes.
    pub(crate) fn new(initial: usize) -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
            initial,
            taken: Cell::new(0),
            reused: Cell::new(0),
        }
    }

    /// An empty buffer with at least the pool's initial capacity.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.taken.set(self.taken.get() + 1);
        match self.free.borrow_mut().pop() {
            Some(v) => {
                self.reused.set(self.reused.get() + 1);
                v
            }
            None => Vec::with_capacity(self.initial),
        }
    }

    /// Returns a buffer to the pool (or frees it, if it grew too large or the pool is full).
    pub(crate) fn give(&self, mut v: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if v.capacity() <= RETAIN_MAX_BYTES && free.len() < MAX_POOLED {
            v.clear();
            free.push(v);
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub(crate) fn take_for(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.take();
        v.reserve(capacity);
        v
    }

    /// (buffers taken, of which reused from the pool).
    pub(crate) fn reuse(&self) -> (u64, u64) {
        (self.taken.get(), self.reused.get())
    }
}

impl crate::service::TensorBuffers for BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        self.take_for(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufferPool::new(64);
        let a = pool.take();
        assert!(a.capacity() >= 64);
        pool.give(a);
        let b = pool.take();
        assert_eq!(pool.reuse(), (2, 1));
        pool.give(b);
        pool.give(Vec::with_capacity(RETAIN_MAX_BYTES + 1));
        assert_eq!(pool.free.borrow().len(), 1, "oversized buffers are freed");
    }
}
