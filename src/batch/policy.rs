//! The dynamic batching policy: a pure state machine over a bounded queue, with the clock passed
//! in (`now`), so every decision is deterministic and testable.
//!
//! Rules, with Triton's knob names:
//! - Admission: at most `max_queue_size` requests wait; a push beyond it is refused at once.
//! - Order: `priority_levels` queues, level 0 first (Triton's priority 1), FIFO within a level.
//! - Never idle while work waits: when the model slot is free, the candidate batch is everything
//!   queued, in order, up to `max_batch_size` items, stopping at the first request that cannot
//!   join (a different shape). With `max_queue_delay` 0 it is dispatched at once, so batches grow
//!   by themselves under load and a lone request never waits.
//! - With a positive delay, the candidate waits for company, but at most until the oldest request
//!   in it has waited `max_queue_delay`, and never closer than [`DEADLINE_GUARD`] to the earliest
//!   deadline in it. A full batch, one that reaches a `preferred_batch_size` (the largest it can
//!   make), or one that cannot grow because the next request in line cannot join it goes at once.
//! - Deadlines: a request whose deadline passes while queued is returned as expired at that
//!   moment (the caller fails it); [`Step::wake_at`] says when to poll again so that happens on
//!   time even while the model slot is busy.
//! - Cancellation: a request whose client has gone is dropped before it is batched.
//!
//! Every pushed item leaves exactly once: refused by `push`, or in one [`Step`] as part of a
//! batch, expired, or dropped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A batch is dispatched at least this long before the earliest deadline in it, so a timer that
/// fires a little late still runs the batch rather than expiring its requests.
pub const DEADLINE_GUARD: Duration = Duration::from_micros(100);

/// The policy's settings (validated by the config layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Most items (sum of the requests' batch dimensions) in one batch; at least 1.
    pub max_batch_size: usize,
    /// How long a batch may wait for more requests; zero dispatches as soon as the slot is free.
    pub max_queue_delay: Duration,
    /// Batch sizes worth dispatching early, ascending, each at most `max_batch_size`.
    pub preferred_batch_sizes: Vec<usize>,
    /// Most requests waiting; at least 1.
    pub max_queue_size: usize,
    /// Number of priority levels (at least 1); level 0 is served first.
    pub priority_levels: usize,
}

/// What the policy needs to know about a queued request.
pub trait Batchable {
    /// Items this request adds to a batch (its batch dimension).
    fn items(&self) -> usize;
    /// Whether this request can share a batch with `first` (same shape beyond the batch dim).
    fn fits_with(&self, first: &Self) -> bool;
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    enqueued: Instant,
    deadline: Option<Instant>,
}

/// The outcome of one [`BatchQueue::poll`]. Reused across polls to avoid allocating.
#[derive(Debug)]
pub struct Step<T> {
    /// The batch to run now, in order; empty if none.
    pub batch: Vec<T>,
    /// Requests whose deadline passed; fail them.
    pub expired: Vec<T>,
    /// Requests whose client has gone; drop them.
    pub dropped: Vec<T>,
    /// Poll again at this time at the latest (a batch's hold ends, or a deadline passes); `None`
    /// means only a new push or a freed slot can change anything.
    pub wake_at: Option<Instant>,
}

impl<T> Default for Step<T> {
    fn default() -> Self {
        Step {
            batch: Vec::new(),
            expired: Vec::new(),
            dropped: Vec::new(),
            wake_at: None,
        }
    }
}

impl<T> Step<T> {
    fn clear(&mut self) {
        self.batch.clear();
        self.expired.clear();
        self.dropped.clear();
        self.wake_at = None;
    }
}

/// The batching queue of one model on one shard.
#[derive(Debug)]
pub struct BatchQueue<T> {
    cfg: PolicyConfig,
    levels: Vec<VecDeque<Entry<T>>>,
    len: usize,
    /// Earliest deadline of any queued request (a lower bound: it may have left the queue).
    next_deadline: Option<Instant>,
}

impl<T: Batchable> BatchQueue<T> {
    /// An empty queue.
    pub fn new(cfg: PolicyConfig) -> Self {
        let levels = (0..cfg.priority_levels.max(1))
            .map(|_| VecDeque::new())
            .collect();
        BatchQueue {
            cfg,
            levels,
            len: 0,
            next_deadline: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` at priority `level` (clamped to the lowest level). Refuses it (handing it
    /// back) when `max_queue_size` requests already wait.
    pub fn push(
        &mut self,
        item: T,
        level: usize,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), T> {
        if self.len >= self.cfg.max_queue_size {
            return Err(item);
        }
        let level = level.min(self.levels.len() - 1);
        self.levels[level].push_back(Entry {
            item,
            enqueued: now,
            deadline,
        });
        self.len += 1;
        if let Some(d) = deadline {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        Ok(())
    }

    /// Decides what happens now. `slot_free` says whether the model can take a batch; `gone`
    /// says whether a request's client has left, and is consulted only when `check_gone` is set
    /// (the caller knows when a client may have left since the last poll).
    pub fn poll(
        &mut self,
        now: Instant,
        slot_free: bool,
        check_gone: bool,
        mut gone: impl FnMut(&T) -> bool,
        step: &mut Step<T>,
    ) {
        step.clear();
        if self.next_deadline.is_some_and(|d| d <= now) {
            self.expire(now, step);
        }
        if check_gone {
            self.drop_gone(&mut gone, step);
        }
        if slot_free && self.len > 0 {
            self.consider_batch(now, step);
        }
        if step.batch.is_empty() || self.len > 0 {
            step.wake_at = min_opt(step.wake_at, self.next_deadline);
        }
    }

    /// Removes every request whose deadline has passed, and recomputes the earliest deadline.
    fn expire(&mut self, now: Instant, step: &mut Step<T>) {
        let mut next = None;
        for level in &mut self.levels {
            let before = level.len();
            let mut kept = VecDeque::with_capacity(before);
            for e in level.drain(..) {
                match e.deadline {
                    Some(d) if d <= now => step.expired.push(e.item),
                    d => {
                        next = min_opt(next, d);
                        kept.push_back(e);
                    }
                }
            }
            *level = kept;
            self.len -= before - level.len();
        }
        self.next_deadline = next;
    }

    /// Drops requests whose client left, wherever they are in line.
    fn drop_gone(&mut self, gone: &mut impl FnMut(&T) -> bool, step: &mut Step<T>) {
        for level in &mut self.levels {
            if level.iter().any(|e| gone(&e.item)) {
                let before = level.len();
                let mut kept = VecDeque::with_capacity(before);
                for e in level.drain(..) {
                    if gone(&e.item) {
                        step.dropped.push(e.item);
                    } else {
                        kept.push_back(e);
                    }
                }
                *level = kept;
                self.len -= before - level.len();
            }
        }
    }

    fn consider_batch(&mut self, now: Instant, step: &mut Step<T>) {
        // The candidate: a prefix of the queue in priority order.
        let max = self.cfg.max_batch_size;
        let mut taken = 0usize; // requests
        let mut items = 0usize;
        let mut oldest: Option<Instant> = None;
        let mut earliest_deadline: Option<Instant> = None;
        let mut preferred_cut: Option<(usize, usize)> = None; // (requests, items)
        let mut first: Option<&T> = None;
        // The next request in line cannot join: waiting cannot grow this batch.
        let mut blocked = false;
        'outer: for level in &self.levels {
            for e in level {
                if let Some(f) = first {
                    if !e.item.fits_with(f) || items + e.item.items() > max {
                        blocked = true;
                        break 'outer;
                    }
                } else {
                    first = Some(&e.item);
                }
                taken += 1;
                items += e.item.items();
                oldest = min_opt(oldest, Some(e.enqueued));
                earliest_deadline = min_opt(earliest_deadline, e.deadline);
                if self.cfg.preferred_batch_sizes.contains(&items) {
                    preferred_cut = Some((taken, items));
                }
            }
        }

        let delay = self.cfg.max_queue_delay;
        let cut = if delay.is_zero() || items == max || blocked {
            Some(taken)
        } else if let Some((requests, _)) = preferred_cut {
            Some(requests)
        } else {
            let oldest = oldest.expect("the candidate holds at least one request");
            let mut hold_until = oldest + delay;
            if let Some(d) = earliest_deadline {
                hold_until = hold_until.min(d.checked_sub(DEADLINE_GUARD).unwrap_or(d));
            }
            if now >= hold_until {
                Some(taken)
            } else {
                step.wake_at = Some(hold_until);
                None
            }
        };
        if let Some(n) = cut {
            self.take(n, step);
        }
    }

    /// The waiting requests in priority order (for tests).
    #[cfg(test)]
    fn waiting(&self) -> impl Iterator<Item = &T> {
        self.levels.iter().flat_map(|l| l.iter().map(|e| &e.item))
    }

    /// Moves the first `n` requests in priority order into the batch.
    fn take(&mut self, mut n: usize, step: &mut Step<T>) {
        for level in &mut self.levels {
            while n > 0 {
                match level.pop_front() {
                    Some(e) => {
                        step.batch.push(e.item);
                        self.len -= 1;
                        n -= 1;
                    }
                    None => break,
                }
            }
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone, PartialEq)]
    struct Req {
        id: u32,
        items: usize,
        shape: u8,
    }

    impl Batchable for Req {
        fn items(&self) -> usize {
            self.items
        }
        fn fits_with(&self, first: &Self) -> bool {
            self.shape == first.shape
        }
    }

    fn cfg(max: usize, delay_us: u64, preferred: &[usize]) -> PolicyConfig {
        PolicyConfig {
            max_batch_size: max,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred_batch_sizes: preferred.to_vec(),
            max_queue_size: 100,
            priority_levels: 1,
        }
    }

    fn req(id: u32, items: usize) -> Req {
        Req {
            id,
            items,
            shape: 0,
        }
    }

    fn ids(v: &[Req]) -> Vec<u32> {
        v.iter().map(|r| r.id).collect()
    }

    fn us(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_micros(n)
    }

    #[test]
    fn zero_delay_takes_everything_queued_at_once() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(4, 0, &[]));
        let mut s = Step::default();
        for i in 0..6 {
            q.push(req(i, 1), 0, None, t0).unwrap();
        }
        q.poll(t0, false, true, |_| false, &mut s);
        assert!(s.batch.is_empty(), "the slot is busy");
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![0, 1, 2, 3]);
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![4, 5]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_lone_request_never_waits_with_zero_delay() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(32, 0, &[]));
        let mut s = Step::default();
        q.push(req(1, 1), 0, None, t0).unwrap();
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![1]);
    }

    #[test]
    fn positive_delay_waits_for_company_then_goes() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(8, 1000, &[]));
        let mut s = Step::default();
        q.push(req(1, 1), 0, None, t0).unwrap();
        q.poll(us(t0, 10), true, true, |_| false, &mut s);
        assert!(s.batch.is_empty());
        assert_eq!(s.wake_at, Some(us(t0, 1000)));
        q.push(req(2, 2), 0, None, us(t0, 500)).unwrap();
        q.poll(us(t0, 999), true, true, |_| false, &mut s);
        assert!(s.batch.is_empty());
        q.poll(us(t0, 1000), true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![1, 2]);
    }

    #[test]
    fn a_full_batch_goes_before_the_delay() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(3, 1000, &[]));
        let mut s = Step::default();
        for i in 0..3 {
            q.push(req(i, 1), 0, None, t0).unwrap();
        }
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![0, 1, 2]);
    }

    #[test]
    fn preferred_sizes_dispatch_early_with_the_largest_reached() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(16, 10_000, &[2, 4]));
        let mut s = Step::default();
        for i in 0..5 {
            q.push(req(i, 1), 0, None, t0).unwrap();
        }
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(
            ids(&s.batch),
            vec![0, 1, 2, 3],
            "the largest preferred size, 4"
        );
        q.poll(t0, true, true, |_| false, &mut s);
        assert!(s.batch.is_empty(), "1 is not preferred: wait for the delay");
    }

    #[test]
    fn deadlines_expire_on_time_even_while_the_slot_is_busy() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(8, 0, &[]));
        let mut s = Step::default();
        q.push(req(1, 1), 0, Some(us(t0, 300)), t0).unwrap();
        q.push(req(2, 1), 0, None, t0).unwrap();
        q.poll(us(t0, 100), false, true, |_| false, &mut s);
        assert_eq!(s.wake_at, Some(us(t0, 300)));
        q.poll(us(t0, 300), false, true, |_| false, &mut s);
        assert_eq!(ids(&s.expired), vec![1]);
        q.poll(us(t0, 400), true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![2]);
    }

    #[test]
    fn a_batch_is_not_held_past_its_earliest_deadline() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(8, 10_000, &[]));
        let mut s = Step::default();
        q.push(req(1, 1), 0, Some(us(t0, 2000)), t0).unwrap();
        q.poll(us(t0, 1), true, true, |_| false, &mut s);
        assert!(s.batch.is_empty());
        assert_eq!(s.wake_at, Some(us(t0, 2000) - DEADLINE_GUARD));
        q.poll(us(t0, 1900), true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![1]);
    }

    #[test]
    fn priorities_order_the_queue() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(PolicyConfig {
            priority_levels: 3,
            ..cfg(2, 0, &[])
        });
        let mut s = Step::default();
        q.push(req(1, 1), 2, None, t0).unwrap();
        q.push(req(2, 1), 1, None, t0).unwrap();
        q.push(req(3, 1), 0, None, t0).unwrap();
        q.push(req(4, 1), 9, None, t0).unwrap();
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![3, 2]);
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![1, 4]);
    }

    #[test]
    fn a_batch_that_cannot_grow_goes_at_once() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(4, 10_000, &[]));
        let mut s = Step::default();
        q.push(req(1, 3), 0, None, t0).unwrap();
        q.push(req(2, 2), 0, None, t0).unwrap();
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(
            ids(&s.batch),
            vec![1],
            "2 cannot join 1 (3 + 2 > 4): no point waiting"
        );
        q.push(
            Req {
                id: 3,
                items: 1,
                shape: 1,
            },
            0,
            None,
            t0,
        )
        .unwrap();
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(ids(&s.batch), vec![2], "3 has another shape");
    }

    #[test]
    fn shapes_that_differ_do_not_share_a_batch() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(cfg(8, 0, &[]));
        let mut s = Step::default();
        q.push(
            Req {
                id: 1,
                items: 1,
                shape: 0,
            },
            0,
            None,
            t0,
        )
        .unwrap();
        q.push(
            Req {
                id: 2,
                items: 1,
                shape: 1,
            },
            0,
            None,
            t0,
        )
        .unwrap();
        q.push(
            Req {
                id: 3,
                items: 1,
                shape: 0,
            },
            0,
            None,
            t0,
        )
        .unwrap();
        q.poll(t0, true, true, |_| false, &mut s);
        assert_eq!(
            ids(&s.batch),
            vec![1],
            "stops at the first that cannot join, keeping order"
        );
    }

    #[test]
    fn gone_clients_are_dropped_before_batching_and_the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(PolicyConfig {
            max_queue_size: 3,
            ..cfg(8, 0, &[])
        });
        let mut s = Step::default();
        for i in 0..3 {
            q.push(req(i, 1), 0, None, t0).unwrap();
        }
        assert_eq!(q.push(req(9, 1), 0, None, t0).unwrap_err().id, 9);
        q.poll(t0, true, true, |r| r.id == 1, &mut s);
        assert_eq!(ids(&s.dropped), vec![1]);
        assert_eq!(ids(&s.batch), vec![0, 2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            items: usize,
            shape: u8,
            level: usize,
            timeout_us: Option<u64>,
        },
        Advance(u64),
        Poll {
            slot_free: bool,
        },
        Gone(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..5, 0u8..2, 0usize..3, proptest::option::of(50u64..3000))
                .prop_map(|(items, shape, level, timeout_us)| Op::Push { items, shape, level, timeout_us }),
            3 => (0u64..800).prop_map(Op::Advance),
            4 => any::<bool>().prop_map(|slot_free| Op::Poll { slot_free }),
            1 => (0u32..40).prop_map(Op::Gone),
        ]
    }

    proptest! {
        #[test]
        fn every_request_leaves_exactly_once_and_the_rules_hold(
            ops in proptest::collection::vec(op(), 1..120),
            max in 1usize..9,
            delay_us in prop_oneof![Just(0u64), 1u64..2000],
            preferred in proptest::collection::vec(1usize..9, 0..3),
        ) {
            let mut preferred: Vec<usize> = preferred.into_iter().filter(|&p| p <= max).collect();
            preferred.sort_unstable();
            preferred.dedup();
            let config = PolicyConfig {
                max_batch_size: max,
                max_queue_delay: Duration::from_micros(delay_us),
                preferred_batch_sizes: preferred.clone(),
                max_queue_size: 12,
                priority_levels: 3,
            };
            let t0 = Instant::now();
            let mut now = t0;
            let mut q = BatchQueue::new(config);
            let mut s = Step::default();
            let mut next_id = 0u32;
            let mut outcomes: HashMap<u32, usize> = HashMap::new();
            let mut enqueued: HashMap<u32, (Instant, Option<Instant>)> = HashMap::new();
            let mut gone_ids = std::collections::HashSet::new();
            let mut pushed = 0usize;

            let check = |s: &Step<Req>, now: Instant, slot_free: bool, q: &BatchQueue<Req>,
                             outcomes: &mut HashMap<u32, usize>,
                             enqueued: &HashMap<u32, (Instant, Option<Instant>)>| -> Result<(), TestCaseError> {
                if !slot_free {
                    prop_assert!(s.batch.is_empty(), "dispatched while the slot was busy");
                }
                let total: usize = s.batch.iter().map(|r| r.items).sum();
                prop_assert!(total <= max, "batch of {} items over max {}", total, max);
                if let Some(first) = s.batch.first() {
                    prop_assert!(s.batch.iter().all(|r| r.shape == first.shape));
                }
                for r in s.batch.iter().chain(&s.expired).chain(&s.dropped) {
                    *outcomes.entry(r.id).or_default() += 1;
                }
                for r in &s.batch {
                    if let (_, Some(d)) = enqueued[&r.id] {
                        prop_assert!(now < d, "request {} dispatched at or after its deadline", r.id);
                    }
                }
                for r in &s.expired {
                    let (_, d) = enqueued[&r.id];
                    prop_assert!(d.is_some_and(|d| d <= now), "request {} expired early", r.id);
                }
                // Nothing that should have gone is left waiting without a wake-up in time.
                if slot_free && s.batch.is_empty() && !q.is_empty() {
                    let wake = s.wake_at.expect("a waiting batch always has a wake-up time");
                    prop_assert!(wake > now);
                    prop_assert!(delay_us > 0, "zero delay must dispatch whenever the slot is free");
                    // A held batch must be able to grow: everything waiting can still join it.
                    let waiting: Vec<&Req> = q.waiting().collect();
                    let total: usize = waiting.iter().map(|r| r.items).sum();
                    prop_assert!(total < max, "held a batch that is already full");
                    prop_assert!(waiting.iter().all(|r| r.shape == waiting[0].shape),
                        "held a batch that the next request cannot join");
                }
                if !s.batch.is_empty() && delay_us > 0 && total != max {
                    // Dispatched before its hold ended only if it reached a preferred size.
                    let oldest = s.batch.iter().map(|r| enqueued[&r.id].0).min().unwrap();
                    let deadline = s.batch.iter().filter_map(|r| enqueued[&r.id].1).min();
                    let mut hold = oldest + Duration::from_micros(delay_us);
                    if let Some(d) = deadline { hold = hold.min(d - DEADLINE_GUARD); }
                    // ... or if the next request in line cannot join it, so waiting is futile.
                    let blocked = q.waiting().next().is_some_and(|next| {
                        next.shape != s.batch[0].shape || total + next.items > max
                    });
                    prop_assert!(now >= hold || preferred.contains(&total) || blocked,
                        "batch of {} dispatched early without being preferred or blocked", total);
                }
                Ok(())
            };

            for op in ops {
                match op {
                    Op::Push { items, shape, level, timeout_us } => {
                        let items = items.min(max);
                        let id = next_id;
                        next_id += 1;
                        let deadline = timeout_us.map(|t| now + Duration::from_micros(t));
                        match q.push(Req { id, items, shape }, level, deadline, now) {
                            Ok(()) => { enqueued.insert(id, (now, deadline)); pushed += 1; }
                            Err(r) => { prop_assert_eq!(r.id, id); prop_assert_eq!(q.len(), 12); *outcomes.entry(id).or_default() += 1; }
                        }
                    }
                    Op::Advance(d) => now += Duration::from_micros(d),
                    Op::Poll { slot_free } => {
                        q.poll(now, slot_free, true, |r| gone_ids.contains(&r.id), &mut s);
                        check(&s, now, slot_free, &q, &mut outcomes, &enqueued)?;
                    }
                    Op::Gone(id) => { gone_ids.insert(id); }
                }
            }
            // Drain: time passes, the slot is free; everything must come out.
            for _ in 0..200 {
                if q.is_empty() { break; }
                now += Duration::from_micros(500);
                q.poll(now, true, true, |r| gone_ids.contains(&r.id), &mut s);
                check(&s, now, true, &q, &mut outcomes, &enqueued)?;
            }
            prop_assert!(q.is_empty());
            prop_assert_eq!(outcomes.len(), next_id as usize);
            prop_assert!(outcomes.values().all(|&n| n == 1), "some request left twice");
            prop_assert!(pushed <= next_id as usize);
        }
    }
}
