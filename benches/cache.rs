//! The response cache's eviction, against the alternative considered: friday's cache
//! (`quick_cache`: CLOCK-PRO-like, weighted by bytes) and least recently used (`lru`, bounded in
//! bytes the same way), on the workload of issue 13: 80 % of requests drawn from 1,000 distinct inputs, 20 %
//! seen once. Each request is a 1 KiB input (128 int64 token ids, as for MiniLM at sequence 128)
//! with a 1.5 KiB answer. Prints the hit rate at cache sizes from a quarter of the hot set to
//! twice it, then the cost per operation of a hit and of a miss with its insert.
//! Run with `cargo bench --bench cache` (about 20 s).

use std::borrow::Cow;
use std::hint::black_box;

use friday::cache::{Lookup, ResponseCache, ENTRY_OVERHEAD_BYTES};
use friday::protocol::{InferRequest, OutputChoice};
use friday::tensor::{DataType, Tensor};
use smallvec::smallvec;

#[path = "support/mod.rs"]
mod support;

const HOT: u64 = 1_000;
const INPUT_BYTES: usize = 1024;
const ANSWER_BYTES: usize = 1536;
const REQUESTS: u64 = 200_000;
const SAMPLES: usize = 2000;

/// Request `i` of the workload: 80 % from the hot set, 20 % never seen again.
fn draw(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    if x % 10 < 8 {
        (x >> 8) % HOT
    } else {
        HOT + i
    }
}

fn request(n: u64) -> InferRequest<'static> {
    let mut data = vec![0u8; INPUT_BYTES];
    data[..8].copy_from_slice(&n.to_le_bytes());
    InferRequest {
        id: None,
        inputs: smallvec![Tensor {
            datatype: DataType::Int64,
            shape: smallvec![1, INPUT_BYTES / 8],
            data: Cow::Owned(data),
        }],
        outputs: smallvec![OutputChoice {
            index: 0,
            binary: true
        }],
        batch_size: 1,
        priority: None,
        timeout_us: None,
    }
}

const HEADER: &[u8] = br#"{"model_name":"m","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[1,384],"parameters":{"binary_data_size":1536}}]}"#;

/// Looks `r` up in friday's cache, storing the answer on a miss; returns whether it hit.
fn friday(c: &mut ResponseCache, r: &InferRequest<'_>, answer: &[u8]) -> bool {
    match c.lookup(0, r) {
        Lookup::Hit(e) => {
            black_box(e.binary());
            true
        }
        Lookup::Miss(key) => {
            c.insert(0, key, "m", "1", None, HEADER, &[answer]);
            false
        }
        Lookup::Uncacheable => false,
    }
}

/// Least recently used, bounded in bytes: keyed by the same bytes, evicting from the cold end
/// until the entries fit.
struct Lru {
    entries: lru::LruCache<Vec<u8>, Vec<u8>>,
    held: u64,
    capacity: u64,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Lru {
            entries: lru::LruCache::unbounded(),
            held: 0,
            capacity,
        }
    }

    fn ask(&mut self, r: &InferRequest<'_>, answer: &[u8]) -> bool {
        let key = r.inputs[0].data.to_vec();
        if let Some(v) = self.entries.get(&key) {
            black_box(v);
            return true;
        }
        let mut v = HEADER.to_vec();
        v.extend_from_slice(answer);
        self.held += (key.len() + v.len()) as u64 + ENTRY_OVERHEAD_BYTES;
        self.entries.put(key, v);
        while self.held > self.capacity {
            let Some((k, v)) = self.entries.pop_lru() else {
                break;
            };
            self.held -= (k.len() + v.len()) as u64 + ENTRY_OVERHEAD_BYTES;
        }
        false
    }
}

fn main() {
    println!("response cache: {}", support::machine());
    let answer = vec![7u8; ANSWER_BYTES];
    // What one entry costs friday's cache: key (the input and its framing), header, answer.
    let entry = (INPUT_BYTES + 64 + HEADER.len() + ANSWER_BYTES) as u64 + ENTRY_OVERHEAD_BYTES;
    println!(
        "hit rate on 80 % of requests from {HOT} inputs ({REQUESTS} requests; the most possible \
         is 80 %)"
    );
    println!(
        "  {:>16} {:>22} {:>12}",
        "cache (entries)", "friday (quick_cache)", "lru"
    );
    for entries in [250u64, 500, 1000, 1500, 2000] {
        let bytes = entries * entry;
        let mut friday_cache = ResponseCache::new(bytes);
        let mut lru = Lru::new(bytes);
        let (mut fh, mut lh) = (0u64, 0u64);
        for i in 0..REQUESTS {
            let n = draw(i);
            let r = request(n);
            fh += friday(&mut friday_cache, &r, &answer) as u64;
            lh += lru.ask(&r, &answer) as u64;
        }
        println!(
            "  {:>16} {:>21.1}% {:>11.1}%",
            entries,
            100.0 * fh as f64 / REQUESTS as f64,
            100.0 * lh as f64 / REQUESTS as f64
        );
    }

    support::header("\ncost per request, cache of 2000 entries", SAMPLES);
    let requests: Vec<InferRequest<'static>> = (0..HOT).map(request).collect();
    let mut friday_cache = ResponseCache::new(2000 * entry);
    for r in &requests {
        friday(&mut friday_cache, r, &answer);
    }
    support::measure("friday: hit (key built, hashed, compared)", SAMPLES, |i| {
        let r = &requests[(i % HOT) as usize];
        assert!(friday(&mut friday_cache, r, &answer));
    });
    let mut lru = Lru::new(2000 * entry);
    for r in &requests {
        lru.ask(r, &answer);
    }
    support::measure("lru: hit", SAMPLES, |i| {
        let r = &requests[(i % HOT) as usize];
        assert!(lru.ask(r, &answer));
    });
    let fresh: Vec<InferRequest<'static>> = (0..4096).map(|n| request(1 << 40 | n)).collect();
    let mut friday_cache = ResponseCache::new(64 * entry);
    support::measure("friday: miss, insert and eviction", SAMPLES, |i| {
        let r = &fresh[(i % 4096) as usize];
        black_box(friday(&mut friday_cache, r, &answer));
    });
    let mut lru = Lru::new(64 * entry);
    support::measure("lru: miss, insert and eviction", SAMPLES, |i| {
        let r = &fresh[(i % 4096) as usize];
        black_box(lru.ask(r, &answer));
    });
}
