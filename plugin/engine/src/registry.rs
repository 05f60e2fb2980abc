//! The process-wide resource registry: the one place where the engine keeps what it memoises
//! outside the frame caches: loaded face parsers, appearance tokens, decoded photos and parsed
//! files. Every such memo goes through it, so that one budget bounds them and one call
//! ([`Registry::purge`], reached from the effect's PurgeCaches through
//! [`crate::service::Service::purge`]) frees them.
//!
//! - **Keys.** An entry is keyed by its [`Kind`] and a 128-bit [`Key`]. What reads a file keys
//!   it by the file's version ([`file_version`]: path, length and modification time), so a
//!   rewritten file is read again and never served stale; what is computed from pixels keys it
//!   by content (a [`KeyHasher`] over the model identity, dtype, device, size and pixels).
//!   Entries may also name a *group* (for files: the path, plus the device for models); an
//!   insert drops the other entries of its group, so an edited file's old version goes as soon as
//!   the new one arrives rather than waiting for eviction.
//! - **Bound.** Entries are evicted least-recently-used until the held bytes fit the budget. The
//!   newest entry is kept even when it alone is larger, as in the frame [`crate::temporal::Cache`]:
//!   a value that was just computed is about to be used. A value evicted while a caller still
//!   holds it lives on in that caller's `Arc` and is freed with it; the registry only stops
//!   handing it out.
//! - **Budget.** The registry's budget is carved out of the cache budget (`cacheMiB` in the
//!   effect): [`share_of`] gives it one eighth ([`SHARE_DIVISOR`]) of the budget, but never less
//!   than [`MIN_BYTES`] (one real BiSeNet checkpoint plus the photos and tokens of a few frames),
//!   and the body service gives the frame cache the rest (raised, as before, to what one request
//!   touches). The body service sets both on every request, so the latest request's `cacheMiB`
//!   wins for both. Until a request sets it (the CLI, which runs no service request), the budget
//!   is [`share_of`] the service's default cache budget.
//! - **Byte counts** are what the value holds: tensor elements × element size for tokens, pixel
//!   bytes for photos, and the file's length for a parsed file or a loaded checkpoint (for a
//!   BiSeNet `.pth` or `.safetensors` in f32 that is its weights' size within a few percent).
//! - **Purge.** [`Registry::purge`] drops every memo; it drops loaded models ([`Kind::Model`])
//!   too only when asked, which the body service does when no render is running, so that a purge
//!   during a render does not force the render's next frame to reload its checkpoint.
use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::Tensor;
use parking_lot::Mutex;

use crate::temporal::{Key, KeyHasher};

/// What an entry is, for purge and for the per-kind counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Loaded network weights (the BiSeNet face parser), kept across purges while renders run.
    Model,
    /// Tokens computed by a network from an image (body and head appearance tokens).
    Tokens,
    /// A decoded image file (a model folder's reference photo).
    Photo,
    /// A parsed data file (a landmarks file).
    File,
}

impl Kind {
    /// Every kind, in the order of [`RegistryStats::by_kind`].
    pub const ALL: [Kind; 4] = [Kind::Model, Kind::Tokens, Kind::Photo, Kind::File];

    fn index(self) -> usize {
        match self {
            Kind::Model => 0,
            Kind::Tokens => 1,
            Kind::Photo => 2,
            Kind::File => 3,
        }
    }
}

/// Entries and bytes of one kind, or of the whole registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now.
    pub bytes: usize,
}

/// The registry's counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Everything held now.
    pub total: Held,
    /// What each kind holds, in the order of [`Kind::ALL`].
    pub by_kind: [Held; 4],
    /// The budget in bytes.
    pub budget: usize,
    /// Most bytes ever held at once.
    pub peak_bytes: usize,
    /// Entries evicted to fit the budget since the registry was made.
    pub evictions: u64,
}

impl RegistryStats {
    /// What `kind` holds now.
    pub fn of(&self, kind: Kind) -> Held {
        self.by_kind[kind.index()]
    }
}

/// The registry's share of a cache budget of `cache_bytes`: one [`SHARE_DIVISOR`]th of it,
/// but at least [`MIN_BYTES`].
pub fn share_of(cache_bytes: usize) -> usize {
    (cache_bytes / SHARE_DIVISOR).max(MIN_BYTES)
}

/// The registry takes this fraction (1/`SHARE_DIVISOR`) of the cache budget. Its entries are few
/// and mostly small (tokens of a few hundred KiB, photos of a few MiB); one eighth of the default
/// 4 GiB holds hundreds of them next to a parser.
pub const SHARE_DIVISOR: usize = 8;

/// The least the registry may hold: a 53 MB BiSeNet checkpoint plus the reference photos and
/// tokens of several frames, so that the parser is not evicted (and reloaded) by every frame of
/// an animated appearance clip even when `cacheMiB` is small.
pub const MIN_BYTES: usize = 128 << 20;

/// A file's version: what identifies the bytes it holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    /// The file's path under a domain tag: every version of the file shares it (an entry group).
    pub path_key: Key,
    /// The path key with the file's length and modification time.
    pub key: Key,
    /// The file's length in bytes.
    pub len: u64,
}

/// The version of the file at `path` under domain `tag`: (path, length, mtime). A file
/// rewritten in place gets a new mtime, and nearly always a new length too, so its new contents
/// get a new key.
pub fn file_version(tag: &str, path: &Path) -> std::io::Result<FileVersion> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    let path_key = KeyHasher::tagged(tag).str(&path.to_string_lossy()).finish();
    let mut k = KeyHasher::tagged("file-version");
    k.key(path_key).u64(meta.len());
    match mtime {
        Some(ns) => k.u64(1).key(ns),
        None => k.u64(0),
    };
    Ok(FileVersion {
        path_key,
        key: k.finish(),
        len: meta.len(),
    })
}

/// The bytes a tensor's elements hold.
pub fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// One entry.
struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    bytes: usize,
    last_use: u64,
    group: Option<Key>,
}

struct Inner {
    slots: HashMap<(Kind, Key), Slot>,
    bytes: usize,
    budget: usize,
    peak_bytes: usize,
    tick: u64,
    evictions: u64,
}

impl Inner {
    /// Evicts least-recently-used entries, never `keep`, until the held bytes plus `extra` fit
    /// the budget or nothing else is left.
    fn evict(&mut self, extra: usize, keep: Option<(Kind, Key)>) {
        while self.bytes + extra > self.budget {
            let oldest = self
                .slots
                .iter()
                .filter(|(k, _)| Some(**k) != keep)
                .min_by_key(|(_, s)| s.last_use)
                .map(|(k, _)| *k);
            let Some(k) = oldest else { break };
            if let Some(s) = self.slots.remove(&k) {
                self.bytes -= s.bytes;
                self.evictions += 1;
            }
        }
    }
}

/// Kind + key → shared value, LRU within a byte budget. See the module docs.
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    /// An empty registry holding at most `budget` bytes (the newest entry is kept even if larger).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                bytes: 0,
                budget,
                peak_bytes: 0,
                tick: 0,
                evictions: 0,
            }),
        }
    }

    /// Changes the budget, evicting least-recently-used entries as needed.
    pub fn set_budget(&self, budget: usize) {
        let mut inner = self.inner.lock();
        inner.budget = budget;
        inner.evict(0, None);
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.inner.lock().budget
    }

    /// The value of (`kind`, `key`), marked as just used; `None` when absent or of another type.
    pub fn get<T: Any + Send + Sync>(&self, kind: Kind, key: Key) -> Option<Arc<T>> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let slot = inner.slots.get_mut(&(kind, key))?;
        slot.last_use = tick;
        slot.value.clone().downcast::<T>().ok()
    }

    /// Keeps `value` (holding `bytes`) under (`kind`, `key`), replacing what was there and
    /// dropping the other entries of `group`, then evicts older entries to fit the budget.
    /// Returns `value`.
    pub fn insert<T: Any + Send + Sync>(
        &self,
        kind: Kind,
        key: Key,
        group: Option<Key>,
        value: Arc<T>,
        bytes: usize,
    ) -> Arc<T> {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.slots.remove(&(kind, key)) {
            inner.bytes -= old.bytes;
        }
        if let Some(g) = group {
            let stale: Vec<(Kind, Key)> = inner
                .slots
                .iter()
                .filter(|(k, s)| k.0 == kind && s.group == Some(g))
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                if let Some(s) = inner.slots.remove(&k) {
                    inner.bytes -= s.bytes;
                }
            }
        }
        // Make room first, so that the peak stays within the budget.
        inner.evict(bytes, None);
        inner.tick += 1;
        let last_use = inner.tick;
        inner.slots.insert(
            (kind, key),
            Slot {
                value: value.clone(),
                bytes,
                last_use,
                group,
            },
        );
        inner.bytes += bytes;
        inner.peak_bytes = inner.peak_bytes.max(inner.bytes);
        value
    }

    /// The value of (`kind`, `key`), made with `make` and kept (holding `bytes(&value)` bytes,
    /// in `group`) when absent. `make` runs without the registry's lock, so slow loads do not
    /// block other memos; two threads missing the same key at once may both make it, and the
    /// first kept is the one returned to both from then on.
    pub fn get_or_insert_with<T: Any + Send + Sync, E>(
        &self,
        kind: Kind,
        key: Key,
        group: Option<Key>,
        bytes: impl FnOnce(&T) -> usize,
        make: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<Arc<T>, E> {
        if let Some(v) = self.get::<T>(kind, key) {
            return Ok(v);
        }
        let value = make()?;
        if let Some(v) = self.get::<T>(kind, key) {
            return Ok(v);
        }
        let n = bytes(&value);
        Ok(self.insert(kind, key, group, Arc::new(value), n))
    }

    /// Drops every memo, and the loaded models too when `models`; returns what was dropped.
    /// Callers holding a value keep it alive through their own `Arc`.
    pub fn purge(&self, models: bool) -> Held {
        let mut inner = self.inner.lock();
        let mut dropped = Held::default();
        inner.slots.retain(|(kind, _), s| {
            let keep = *kind == Kind::Model && !models;
            if !keep {
                dropped.entries += 1;
                dropped.bytes += s.bytes;
            }
            keep
        });
        inner.bytes -= dropped.bytes;
        dropped
    }

    /// Entries and bytes held now, in all and by kind.
    pub fn stats(&self) -> RegistryStats {
        let inner = self.inner.lock();
        let mut by_kind = [Held::default(); 4];
        for ((kind, _), s) in &inner.slots {
            let h = &mut by_kind[kind.index()];
            h.entries += 1;
            h.bytes += s.bytes;
        }
        RegistryStats {
            total: Held {
                entries: inner.slots.len(),
                bytes: inner.bytes,
            },
            by_kind,
            budget: inner.budget,
            peak_bytes: inner.peak_bytes,
            evictions: inner.evictions,
        }
    }
}

static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();

/// The process's registry, shared by the body and face services and the free functions that
/// memoise files ([`crate::pipeline::read_rgb8_memo`], the BiSeNet parser loader).
pub fn shared() -> Arc<Registry> {
    global_arc().clone()
}

/// The process's registry (see [`shared`]).
pub fn global() -> &'static Registry {
    global_arc()
}

fn global_arc() -> &'static Arc<Registry> {
    REGISTRY.get_or_init(|| Arc::new(Registry::new(share_of(crate::service::DEFAULT_CACHE_BYTES))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(i: u64) -> Key {
        KeyHasher::tagged("test").u64(i).finish()
    }

    #[test]
    fn lru_by_bytes_keeps_the_newest_and_the_recently_used() {
        let r = Registry::new(300);
        for i in 0..3 {
            r.insert(Kind::Tokens, tagged(i), None, Arc::new(i), 100);
        }
        assert_eq!(
            r.stats().total,
            Held {
                entries: 3,
                bytes: 300
            }
        );
        // Entry 0 is used, so entry 1 is now the least recently used.
        assert_eq!(r.get::<u64>(Kind::Tokens, tagged(0)).as_deref(), Some(&0));
        r.insert(Kind::Photo, tagged(3), None, Arc::new(3u64), 100);
        assert!(r.get::<u64>(Kind::Tokens, tagged(1)).is_none());
        assert!(r.get::<u64>(Kind::Tokens, tagged(0)).is_some());
        let s = r.stats();
        assert_eq!(
            s.total,
            Held {
                entries: 3,
                bytes: 300
            }
        );
        assert_eq!(
            s.of(Kind::Photo),
            Held {
                entries: 1,
                bytes: 100
            }
        );
        assert_eq!((s.evictions, s.peak_bytes), (1, 300));
        // An entry above the budget is kept alone.
        r.insert(Kind::File, tagged(9), None, Arc::new(9u64), 1000);
        assert_eq!(
            r.stats().total,
            Held {
                entries: 1,
                bytes: 1000
            }
        );
        // A smaller budget evicts at once.
        r.set_budget(10);
        r.insert(Kind::File, tagged(10), None, Arc::new(10u64), 5);
        assert_eq!(
            r.stats().total,
            Held {
                entries: 1,
                bytes: 5
            }
        );
    }

    #[test]
    fn a_group_keeps_one_version_and_a_wrong_type_is_a_miss() {
        let r = Registry::new(1 << 20);
        let group = tagged(100);
        r.insert(Kind::File, tagged(1), Some(group), Arc::new(1u32), 10);
        r.insert(Kind::File, tagged(2), Some(group), Arc::new(2u32), 10);
        assert!(
            r.get::<u32>(Kind::File, tagged(1)).is_none(),
            "old version dropped"
        );
        assert_eq!(r.get::<u32>(Kind::File, tagged(2)).as_deref(), Some(&2));
        assert!(r.get::<u64>(Kind::File, tagged(2)).is_none());
        assert!(
            r.get::<u32>(Kind::Photo, tagged(2)).is_none(),
            "kinds are apart"
        );
        assert_eq!(
            r.stats().total,
            Held {
                entries: 1,
                bytes: 10
            }
        );
    }

    #[test]
    fn get_or_insert_with_makes_once_and_purge_keeps_models_only_when_asked() {
        let r = Registry::new(1 << 20);
        let mut made = 0;
        for _ in 0..3 {
            let v = r
                .get_or_insert_with(
                    Kind::Model,
                    tagged(1),
                    None,
                    |_| 7,
                    || {
                        made += 1;
                        Ok::<_, ()>(5u8)
                    },
                )
                .unwrap();
            assert_eq!(*v, 5);
        }
        assert_eq!(made, 1);
        let err = r.get_or_insert_with::<u8, _>(Kind::Tokens, tagged(2), None, |_| 1, || Err("no"));
        assert_eq!(err.err(), Some("no"));
        r.insert(Kind::Tokens, tagged(3), None, Arc::new(0u8), 3);
        assert_eq!(
            r.purge(false),
            Held {
                entries: 1,
                bytes: 3
            }
        );
        assert_eq!(
            r.stats().of(Kind::Model),
            Held {
                entries: 1,
                bytes: 7
            }
        );
        assert_eq!(
            r.purge(true),
            Held {
                entries: 1,
                bytes: 7
            }
        );
        assert_eq!(r.stats().total, Held::default());
    }

    #[test]
    fn file_versions_change_with_the_file() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("mya-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("a.txt");
        std::fs::write(&path, b"one")?;
        let a = file_version("t", &path)?;
        assert_eq!(a, file_version("t", &path)?);
        assert_ne!(a.path_key, file_version("u", &path)?.path_key, "tags apart");
        std::fs::write(&path, b"three")?;
        let b = file_version("t", &path)?;
        assert_eq!(a.path_key, b.path_key);
        assert_ne!(a.key, b.key);
        assert!(file_version("t", &dir.join("absent")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn the_share_is_an_eighth_with_a_floor() {
        assert_eq!(share_of(4096 << 20), 512 << 20);
        assert_eq!(share_of(0), MIN_BYTES);
    }

    /// The memos of the services and free functions, filled against the tiny fixture models.
    mod memos {
        use super::*;
        use crate::device::DeviceChoice;
        use crate::face::{FaceSettings, RgbFrame};
        use crate::face_service::{FaceRequest, FaceService};
        use crate::networks::bisenet::FaceParser;
        use crate::networks::unet::ControlResiduals;
        use crate::service::{Appearance, RenderSettings, Service};
        use crate::temporal::{Fusion, Tail};
        use candle_core::{DType, Device};
        use std::path::PathBuf;

        fn fixtures() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
        }

        fn settings() -> RenderSettings {
            RenderSettings {
                folder: fixtures().join("tiny"),
                device: DeviceChoice::Cpu,
                dtype: DType::F32,
                steps: 2,
                guidance: 7.5,
                control_scale: 2.0,
                control_residuals: ControlResiduals::Original,
                window: 2,
                overlap: 0,
                fusion: Fusion::Flat,
                tail: Tail::Paper,
                resolution: 64,
                seed: 42,
                cache_bytes: 256 << 20,
                memory_limit: None,
                preview: false,
            }
        }

        /// A distinct 4×4 photo per `i`.
        fn photo(i: usize) -> Vec<u8> {
            (0..48)
                .map(|p| (i * 7 + p * 13 + i / 37 * p) as u8)
                .collect()
        }

        #[test]
        fn purge_empties_every_memo() -> std::result::Result<(), Box<dyn std::error::Error>> {
            let registry = Arc::new(Registry::new(1 << 30));
            let body = Service::with_registry(registry.clone());
            let face = FaceService::with_registry(registry.clone());
            let pixels = photo(0);
            body.appearance_tokens(
                &settings(),
                Appearance::Rgb8 {
                    data: &pixels,
                    width: 4,
                    height: 4,
                },
            )?;
            let req = FaceRequest {
                folder: fixtures().join("tiny_face"),
                device: DeviceChoice::Cpu,
                dtype: DType::F32,
                settings: FaceSettings::default(),
                smoothing: None,
            };
            face.head_tokens(
                &req,
                RgbFrame {
                    data: &pixels,
                    width: 4,
                    height: 4,
                },
            )?;
            let photo =
                crate::pipeline::read_rgb8_memo_in(&registry, &fixtures().join("photo.png"))?;
            let dir =
                std::env::temp_dir().join(format!("mya-registry-memos-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let landmarks = dir.join("landmarks.json");
            std::fs::write(
                &landmarks,
                r#"{"0": [[20, 24], [40, 24], [30, 34], [22, 44], [38, 44]], "1": null}"#,
            )?;
            face.landmarks_file(&landmarks)?;
            let parser = fixtures().join("bisenet_tiny.pth");
            FaceParser::load_shared_in(&registry, &parser, &Device::Cpu)?;
            let stats = registry.stats();
            assert_eq!(stats.of(Kind::Tokens).entries, 2, "body and head tokens");
            assert_eq!(
                stats.of(Kind::Photo),
                Held {
                    entries: 1,
                    bytes: photo.0.len()
                }
            );
            assert_eq!(
                stats.of(Kind::File),
                Held {
                    entries: 1,
                    bytes: std::fs::metadata(&landmarks)?.len() as usize
                }
            );
            assert_eq!(
                stats.of(Kind::Model),
                Held {
                    entries: 1,
                    bytes: std::fs::metadata(&parser)?.len() as usize
                }
            );
            assert_eq!(stats.total.entries, 5);
            assert!(body.loaded_models() == 1);
            // No render runs: the purge frees the memos and the models.
            assert!(body.purge());
            face.purge();
            let stats = registry.stats();
            assert_eq!(stats.total, Held::default());
            for kind in Kind::ALL {
                assert_eq!(stats.of(kind), Held::default(), "{kind:?}");
            }
            assert_eq!(body.loaded_models(), 0);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }

        #[test]
        fn an_animated_appearance_clip_keeps_the_memo_bounded(
        ) -> std::result::Result<(), Box<dyn std::error::Error>> {
            const FRAMES: usize = 500;
            const KEEP: usize = 10;
            let registry = Arc::new(Registry::new(1 << 30));
            let body = Service::with_registry(registry.clone());
            let s = settings();
            let frame = |i: usize| photo(i);
            let first = frame(0);
            let one = tensor_bytes(&body.appearance_tokens(
                &s,
                Appearance::Rgb8 {
                    data: &first,
                    width: 4,
                    height: 4,
                },
            )?);
            assert!(one > 0);
            let budget = KEEP * one;
            registry.set_budget(budget);
            let mut distinct = std::collections::HashSet::new();
            for i in 0..FRAMES {
                let pixels = frame(i);
                distinct.insert(pixels.clone());
                let tokens = body.appearance_tokens(
                    &s,
                    Appearance::Rgb8 {
                        data: &pixels,
                        width: 4,
                        height: 4,
                    },
                )?;
                assert_eq!(tensor_bytes(&tokens), one);
                let stats = registry.stats();
                assert!(
                    stats.total.entries <= KEEP && stats.total.bytes <= budget,
                    "frame {i}: {:?} above {KEEP} entries / {budget} bytes",
                    stats.total
                );
            }
            assert_eq!(distinct.len(), FRAMES, "every frame's photo is new");
            let stats = registry.stats();
            assert_eq!(
                stats.total.entries, KEEP,
                "the newest {KEEP} photos are kept"
            );
            assert_eq!(stats.evictions as usize, FRAMES - KEEP);
            assert!(stats.peak_bytes <= budget);
            Ok(())
        }
    }
}
