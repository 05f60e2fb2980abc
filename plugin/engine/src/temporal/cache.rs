//! The process-global, content-keyed, byte-budgeted memo of the temporal engine.
//!
//! Entries are keyed by a 128-bit content hash (see [`KeyHasher`]): nothing in a key refers to a
//! request, an instance or a thread, so any order of requests reads the same values. Computation
//! is single-flight: a thread asking for a key that another thread is computing waits for it
//! instead of computing it again. Eviction is least-recently-used within a byte budget; an evicted
//! entry is simply recomputed (identically) when needed again, never served stale.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use parking_lot::{Condvar, Mutex};

use crate::Result;

/// A 128-bit content key.
pub type Key = u128;

/// FNV-1a over 128 bits: a stable hash (identical across processes and builds), so farm nodes and
/// reruns agree on keys.
#[derive(Debug, Clone)]
pub struct KeyHasher(u128);

impl Default for KeyHasher {
    fn default() -> Self {
        Self(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }
}

impl KeyHasher {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;

    /// A hasher whose state starts from a domain tag, so keys of different kinds never collide.
    pub fn tagged(tag: &str) -> Self {
        let mut h = Self::default();
        h.bytes(tag.as_bytes());
        h
    }

    /// Feeds raw bytes.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for &b in data {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }

    /// Feeds an unsigned integer (little endian, fixed width).
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Feeds another key.
    pub fn key(&mut self, k: Key) -> &mut Self {
        self.bytes(&k.to_le_bytes())
    }

    /// Feeds a float by its bit pattern.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    /// Feeds a string, length-prefixed.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// Feeds f32 data by bit pattern.
    pub fn f32s(&mut self, data: &[f32]) -> &mut Self {
        for v in data {
            self.bytes(&v.to_bits().to_le_bytes());
        }
        self
    }

    /// The key.
    pub fn finish(&self) -> Key {
        self.0
    }
}

/// A cached value.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Uncond and cond noise predictions of one window at one step, `[F, 4, h, w]` each.
    Eps {
        /// Unconditional half of the CFG batch.
        uncond: Tensor,
        /// Conditional half.
        cond: Tensor,
    },
    /// One frame's latents after a step, `[4, h, w]`.
    Latent(Tensor),
    /// One decoded frame, RGB f32 `[3, H, W]` in [0, 1].
    Image(Tensor),
}

impl Entry {
    fn bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Entry::Eps { uncond, cond } => t(uncond) + t(cond),
            Entry::Latent(x) | Entry::Image(x) => t(x),
        }
    }
}

type Pending = Arc<(Mutex<bool>, Condvar)>;

enum Slot {
    Ready {
        entry: Entry,
        bytes: usize,
        last_use: u64,
    },
    Computing(Pending),
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    bytes: usize,
    peak_bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

/// Counters of a cache, for logs, the CLI summary and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests served from a ready entry.
    pub hits: u64,
    /// Requests that computed their entry.
    pub misses: u64,
    /// Bytes held now.
    pub bytes: usize,
    /// Most bytes ever held.
    pub peak_bytes: usize,
    /// Entries held now.
    pub entries: usize,
}

/// The memo: content key → entry, LRU within `budget` bytes, single-flight computation.
pub struct Cache {
    inner: Mutex<Inner>,
    budget: Mutex<usize>,
}

impl Cache {
    /// An empty cache holding at most `budget` bytes (the newest entry is kept even if larger).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget: Mutex::new(budget),
        }
    }

    /// Changes the budget, evicting as needed.
    pub fn set_budget(&self, budget: usize) {
        *self.budget.lock() = budget;
        let mut inner = self.inner.lock();
        Self::evict(&mut inner, budget);
    }

    /// The entry for `key`, computing it with `compute` unless it is ready or being computed by
    /// another thread (then this waits for that thread). A failed computation leaves no entry;
    /// waiting threads then try themselves.
    pub fn get_or_compute(
        &self,
        key: Key,
        compute: impl FnOnce() -> Result<Entry>,
    ) -> Result<Entry> {
        let pending = loop {
            let mut inner = self.inner.lock();
            inner.tick += 1;
            let tick = inner.tick;
            match inner.slots.get_mut(&key) {
                Some(Slot::Ready {
                    entry, last_use, ..
                }) => {
                    *last_use = tick;
                    let e = entry.clone();
                    inner.hits += 1;
                    return Ok(e);
                }
                Some(Slot::Computing(p)) => {
                    let p = p.clone();
                    drop(inner);
                    let (done, cv) = &*p;
                    let mut done = done.lock();
                    while !*done {
                        cv.wait(&mut done);
                    }
                    // Loop: the entry is ready now, or the computation failed and we try.
                }
                None => {
                    let p: Pending = Arc::new((Mutex::new(false), Condvar::new()));
                    inner.slots.insert(key, Slot::Computing(p.clone()));
                    inner.misses += 1;
                    break p;
                }
            }
        };
        // Release waiters however `compute` ends, panics included.
        struct Release<'a>(&'a Cache, Key, Pending, Option<Entry>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let budget = *self.0.budget.lock();
                let mut inner = self.0.inner.lock();
                match self.3.take() {
                    Some(entry) => {
                        let bytes = entry.bytes();
                        // Make room first, so the peak stays within the budget.
                        Cache::evict(&mut inner, budget.saturating_sub(bytes));
                        inner.tick += 1;
                        let last_use = inner.tick;
                        inner.slots.insert(
                            self.1,
                            Slot::Ready {
                                entry,
                                bytes,
                                last_use,
                            },
                        );
                        inner.bytes += bytes;
                        inner.peak_bytes = inner.peak_bytes.max(inner.bytes);
                    }
                    None => {
                        inner.slots.remove(&self.1);
                    }
                }
                drop(inner);
                *self.2 .0.lock() = true;
                self.2 .1.notify_all();
            }
        }
        let mut release = Release(self, key, pending, None);
        let entry = compute()?;
        release.3 = Some(entry.clone());
        Ok(entry)
    }

    /// The ready entry for `key`, if any (counts as a use, not as a hit).
    pub fn peek(&self, key: Key) -> Option<Entry> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        match inner.slots.get_mut(&key) {
            Some(Slot::Ready {
                entry, last_use, ..
            }) => {
                *last_use = tick;
                Some(entry.clone())
            }
            _ => None,
        }
    }

    fn evict(inner: &mut Inner, budget: usize) {
        while inner.bytes > budget {
            let oldest = inner
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready { last_use, .. } => Some((*last_use, *k)),
                    Slot::Computing(_) => None,
                })
                .min();
            let Some((_, key)) = oldest else { break };
            if let Some(Slot::Ready { bytes, .. }) = inner.slots.remove(&key) {
                inner.bytes -= bytes;
            }
        }
    }

    /// Frees every ready entry (PurgeCaches). Computations in flight finish normally.
    pub fn purge(&self) {
        let mut inner = self.inner.lock();
        inner.slots.retain(|_, s| matches!(s, Slot::Computing(_)));
        inner.bytes = 0;
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            bytes: inner.bytes,
            peak_bytes: inner.peak_bytes,
            entries: inner.slots.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn latent(v: f32) -> Entry {
        Entry::Latent(Tensor::full(v, (4, 2, 2), &Device::Cpu).unwrap())
    }

    #[test]
    fn memoises_and_counts() {
        let c = Cache::new(1 << 20);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            c.get_or_compute(7, || {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(latent(1.0))
            })
            .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.bytes), (2, 1, 64));
    }

    #[test]
    fn lru_evicts_oldest_within_budget() {
        let c = Cache::new(128); // room for two 64-byte latents
        for k in 0..3u128 {
            c.get_or_compute(k, || Ok(latent(k as f32))).unwrap();
        }
        assert!(c.peek(0).is_none());
        assert!(c.peek(1).is_some() && c.peek(2).is_some());
        assert_eq!(c.stats().peak_bytes, 128);
        c.purge();
        assert_eq!(c.stats().bytes, 0);
        assert!(c.peek(2).is_none());
    }

    #[test]
    fn failed_computation_leaves_no_entry() {
        let c = Cache::new(1 << 20);
        let r = c.get_or_compute(1, || Err(crate::EngineError::Input("cancelled".into())));
        assert!(r.is_err());
        assert!(c.peek(1).is_none());
        assert!(c.get_or_compute(1, || Ok(latent(2.0))).is_ok());
    }

    #[test]
    fn single_flight_across_threads() {
        let c = Arc::new(Cache::new(1 << 20));
        let calls = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (c, calls) = (c.clone(), calls.clone());
                std::thread::spawn(move || {
                    c.get_or_compute(42, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(latent(3.0))
                    })
                    .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn hasher_is_stable() {
        let k = KeyHasher::tagged("eps").u64(3).str("flat").finish();
        assert_eq!(k, KeyHasher::tagged("eps").u64(3).str("flat").finish());
        assert_ne!(k, KeyHasher::tagged("eps").u64(4).str("flat").finish());
    }
}
