//! Batch-overlapped temporal denoising served frame by frame, with exact semantics.
//!
//! The reference denoises the whole clip jointly: at each DDIM step every window predicts noise
//! from the same pre-step latents, each frame averages the uncond and cond predictions of the
//! windows covering it, then CFG and one DDIM step give the next latents. Every value in that
//! computation is a function of a few earlier values only:
//!
//! - `x(0, f)` = the initial noise (the same tensor for every frame);
//! - `eps(s, w)` = the networks on `x(s, f)` for the frames `f` of window `w` and their controls;
//! - `x(s+1, f)` = DDIM(`x(s, f)`, CFG(fused `eps(s, w)` over the windows `w` covering `f`)).
//!
//! So a request for frame `f` evaluates `x(S, f)` on demand, memoising each `eps(s, w)` and
//! `x(s, f)` in the shared [`Cache`] under a content key built like a Merkle tree from the keys of
//! its inputs (model, parameters, control-frame hashes, initial noise). Whatever the order of
//! requests, the thread count or the process, each value is computed from identical inputs by
//! identical operations, hence bit-identical. A request touches only its dependency cone, which
//! widens by one stride per step ([`WindowPlan::cone`]): the cost of one frame is bounded by
//! `steps × (2·steps + 1)` window calls whatever the clip length.
//!
//! Waits never form a cycle: computing `x(s, ·)` waits only on `eps(s−1, ·)` and `x(s−1, ·)`, and
//! computing `eps(s, ·)` only on `x(s, ·)`, so every wait is for a strictly earlier value.
//!
//! With a [`SharedStore`] (a render farm's shared folder, issue 15), each memoised value is looked
//! up in the process's [`Cache`], then in the store, and only then computed and published. The
//! same keys name the same bytes in every process, and entries are stored by bit pattern, so a
//! frame's bytes do not depend on which process computed which window. Then
//! [`TemporalDenoiser::render_cone`] (in `denoiser/farm.rs`) spreads the network calls of several
//! processes over the windows of each step.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use parking_lot::Mutex;

use super::cache::{Cache, Entry, Key, KeyHasher};
use super::shared::{EntryKind, SharedStore};
use super::windows::{Fusion, WindowPlan};
use crate::{EngineError, Result};

mod farm;

/// The networks as the temporal engine sees them: one window in, its CFG noise predictions out.
pub trait WindowNetworks: Send + Sync {
    /// Noise predictions `(uncond, cond)`, each `[F, 4, h, w]`, for the window latents
    /// `[F, 4, h, w]` at `timestep`, with control frames `[F, 3, H, W]` in [0, 1] scaled by
    /// `control_scale`. One call = one UNet+ControlNet batch.
    fn predict(
        &self,
        latents: &Tensor,
        timestep: usize,
        control: &Tensor,
        control_scale: f64,
    ) -> Result<(Tensor, Tensor)>;

    /// Decodes one frame's final latents `[4, h, w]` into RGB `[3, H, W]` in [0, 1].
    fn decode(&self, latent: &Tensor) -> Result<Tensor>;

    /// A key for everything about the networks that changes their outputs: weights identity,
    /// appearance tokens, device and dtype.
    fn identity(&self) -> Key;
}

/// One step of a sampler on any latents (DDIM in the product).
pub trait StepScheduler: Send + Sync {
    /// The timesteps, first step first.
    fn timesteps(&self) -> Vec<usize>;
    /// `x_{t-1}` from `eps` and `x_t` at `timestep`.
    fn step(&self, eps: &Tensor, timestep: usize, sample: &Tensor) -> Result<Tensor>;
}

/// The control (mesh-render) frames of the whole clip, fetched lazily.
pub trait ControlFrames: Send + Sync {
    /// Number of frames in the clip (this anchors the windows).
    fn len(&self) -> usize;
    /// True when the clip has no frames.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A content hash of frame `f` at the working resolution.
    fn key(&self, f: usize) -> Result<Key>;
    /// Frame `f` as RGB `[3, H, W]` in [0, 1], on the networks' device and dtype.
    fn frame(&self, f: usize) -> Result<Tensor>;
}

/// Progress reports and cancellation, polled between window batches.
pub trait Progress: Send + Sync {
    /// A window batch finished: step `step` of `steps`, window `window`.
    fn window_done(&self, _step: usize, _steps: usize, _window: usize) {}
    /// A window of the request's cone was already there (in the cache, or published by another
    /// process of a farm job): progress without a batch. Counts as done unless overridden.
    fn window_read(&self, step: usize, steps: usize, window: usize) {
        self.window_done(step, steps, window);
    }
    /// True when the request should stop.
    fn cancelled(&self) -> bool {
        false
    }
}

/// No progress reporting, never cancelled.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Sampling settings that change the result.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Classifier-free guidance scale `g` in `ε = ε_u + g(ε_c − ε_u)`.
    pub guidance: f64,
    /// ControlNet conditioning scale.
    pub control_scale: f64,
}

/// Process-wide counters of work done.
#[derive(Debug, Default)]
pub struct Counters {
    /// UNet+ControlNet window batches run.
    pub network_calls: AtomicU64,
    /// VAE decodes run.
    pub decodes: AtomicU64,
}

/// One clip's denoising problem, answering frame requests.
pub struct TemporalDenoiser<'a> {
    nets: &'a dyn WindowNetworks,
    scheduler: &'a dyn StepScheduler,
    control: &'a dyn ControlFrames,
    cache: &'a Cache,
    counters: &'a Counters,
    plan: WindowPlan,
    timesteps: Vec<usize>,
    params: SamplingParams,
    noise: Tensor,
    base: Key,
    keys: Mutex<HashMap<(u8, usize, usize), Key>>,
    shared: Option<Arc<SharedStore>>,
}

const X: u8 = 0;
const EPS: u8 = 1;

impl<'a> TemporalDenoiser<'a> {
    /// Sets up a clip. `noise` is the initial latent `[4, h, w]` shared by all frames, already on
    /// the networks' device and dtype; `noise_key` identifies it (seed or file hash).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nets: &'a dyn WindowNetworks,
        scheduler: &'a dyn StepScheduler,
        control: &'a dyn ControlFrames,
        cache: &'a Cache,
        counters: &'a Counters,
        plan: WindowPlan,
        params: SamplingParams,
        noise: Tensor,
        noise_key: Key,
    ) -> Result<Self> {
        if plan.len() != control.len() {
            return Err(EngineError::Input(format!(
                "window plan covers {} frames but the clip has {}",
                plan.len(),
                control.len()
            )));
        }
        if noise.rank() != 3 {
            return Err(EngineError::Input(format!(
                "initial noise must be [4, h, w], got {:?}",
                noise.dims()
            )));
        }
        let timesteps = scheduler.timesteps();
        let (window, overlap) = plan.shape();
        let mut h = KeyHasher::tagged("make-your-anchor/clip/v1");
        h.key(nets.identity()).key(noise_key);
        h.u64(plan.len() as u64)
            .u64(window as u64)
            .u64(overlap as u64);
        for w in plan.windows() {
            h.u64(w.start as u64).u64(w.end as u64);
        }
        h.str(match plan.fusion() {
            Fusion::Flat => "flat",
            Fusion::Pyramid => "pyramid",
            Fusion::OverlapLinear => "overlap-linear",
        });
        for &t in &timesteps {
            h.u64(t as u64);
        }
        h.f64(params.guidance).f64(params.control_scale);
        for &d in noise.dims() {
            h.u64(d as u64);
        }
        h.str(&format!("{:?}", noise.dtype()));
        let base = h.finish();
        Ok(Self {
            nets,
            scheduler,
            control,
            cache,
            counters,
            plan,
            timesteps,
            params,
            noise,
            base,
            keys: Mutex::new(HashMap::new()),
            shared: None,
        })
    }

    /// Shares this clip's memoised values through `store` (a farm's shared cache folder), or stops
    /// sharing with `None`. Values are then looked up in the process cache, then in the store, and
    /// only computed (and published) when both miss.
    pub fn with_shared(mut self, store: Option<Arc<SharedStore>>) -> Self {
        self.shared = store;
        self
    }

    /// The shared store, if any.
    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    /// Number of denoising steps.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The window plan.
    pub fn plan(&self) -> &WindowPlan {
        &self.plan
    }

    fn memo_key(&self, id: (u8, usize, usize), make: impl FnOnce() -> Result<Key>) -> Result<Key> {
        if let Some(&k) = self.keys.lock().get(&id) {
            return Ok(k);
        }
        let k = make()?;
        self.keys.lock().insert(id, k);
        Ok(k)
    }

    /// The entry for `key`: from the process cache, else from the shared store (kept in the cache),
    /// else computed once and published.
    fn memoised(
        &self,
        key: Key,
        kind: EntryKind,
        compute: impl FnOnce() -> Result<Entry>,
    ) -> Result<Entry> {
        self.cache.get_or_compute(key, || {
            let Some(store) = &self.shared else {
                return compute();
            };
            if let Some(entry) = store.get(key, kind, self.noise.device()) {
                return Ok(entry);
            }
            let entry = compute()?;
            store.publish(key, &entry);
            Ok(entry)
        })
    }

    /// Key of `x(s, f)`. Iterative over steps so that deep cones need no deep recursion.
    fn x_key(&self, s: usize, f: usize) -> Result<Key> {
        if s == 0 {
            return Ok(KeyHasher::tagged("x0").key(self.base).finish());
        }
        if let Some(&k) = self.keys.lock().get(&(X, s, f)) {
            return Ok(k);
        }
        // Fill lower levels of this frame's cone first, bottom-up.
        let mut frames = f..f + 1;
        let mut levels = vec![frames.clone()];
        for _ in 1..s {
            frames = self.plan.cone(frames, 1);
            levels.push(frames.clone());
        }
        for (depth, range) in levels.iter().enumerate().rev() {
            let level = s - depth;
            for g in range.clone() {
                self.memo_key((X, level, g), || {
                    let mut h = KeyHasher::tagged("x");
                    h.key(self.base).u64(level as u64).u64(g as u64);
                    h.key(self.x_key(level - 1, g)?);
                    for &w in self.plan.covering(g) {
                        h.key(self.eps_key(level - 1, w)?);
                    }
                    Ok(h.finish())
                })?;
            }
        }
        self.keys
            .lock()
            .get(&(X, s, f))
            .copied()
            .ok_or_else(|| EngineError::Input(format!("internal: no key for x({s}, {f})")))
    }

    fn eps_key(&self, s: usize, w: usize) -> Result<Key> {
        self.memo_key((EPS, s, w), || {
            let mut h = KeyHasher::tagged("eps");
            h.key(self.base).u64(s as u64).u64(w as u64);
            for f in self.plan.windows()[w].clone() {
                h.key(self.control.key(f)?);
                h.key(self.x_key(s, f)?);
            }
            Ok(h.finish())
        })
    }

    /// The latents of frame `f` after `s` steps.
    pub fn latent(&self, s: usize, f: usize, progress: &dyn Progress) -> Result<Tensor> {
        if s == 0 {
            return Ok(self.noise.clone());
        }
        let key = self.x_key(s, f)?;
        let entry = self.memoised(key, EntryKind::Latent, || {
            let x_prev = self.latent(s - 1, f, progress)?;
            let (mut u_sum, mut c_sum, mut w_sum) = (None::<Tensor>, None::<Tensor>, 0f64);
            for &w in self.plan.covering(f) {
                let (u, c) = self.eps(s - 1, w, progress)?;
                let i = f - self.plan.windows()[w].start;
                let weight = self.plan.weight(w, i);
                let (u, c) = (u.get(i)?, c.get(i)?);
                let (u, c) = if weight == 1.0 {
                    (u, c)
                } else {
                    (u.affine(weight, 0.0)?, c.affine(weight, 0.0)?)
                };
                u_sum = Some(match u_sum {
                    Some(acc) => (acc + u)?,
                    None => u,
                });
                c_sum = Some(match c_sum {
                    Some(acc) => (acc + c)?,
                    None => c,
                });
                w_sum += weight;
            }
            let (Some(u), Some(c)) = (u_sum, c_sum) else {
                return Err(EngineError::Input(format!(
                    "internal: frame {f} is in no window"
                )));
            };
            // Mean of the predictions over the covering windows, then CFG.
            let n = Tensor::new(w_sum as f32, u.device())?.to_dtype(u.dtype())?;
            let (u, c) = (u.broadcast_div(&n)?, c.broadcast_div(&n)?);
            let eps = (&u + ((c - &u)? * self.params.guidance)?)?;
            let x = self.scheduler.step(&eps, self.timesteps[s - 1], &x_prev)?;
            Ok(Entry::Latent(x))
        })?;
        match entry {
            Entry::Latent(x) => Ok(x),
            _ => Err(EngineError::Input(format!(
                "internal: cache entry of x({s}, {f}) has the wrong kind"
            ))),
        }
    }

    fn eps(&self, s: usize, w: usize, progress: &dyn Progress) -> Result<(Tensor, Tensor)> {
        let key = self.eps_key(s, w)?;
        let entry = self.memoised(key, EntryKind::Eps, || {
            let frames = self.plan.windows()[w].clone();
            let mut xs = Vec::with_capacity(frames.len());
            let mut ctrl = Vec::with_capacity(frames.len());
            for f in frames {
                xs.push(self.latent(s, f, progress)?);
                ctrl.push(self.control.frame(f)?);
            }
            if progress.cancelled() {
                return Err(EngineError::Cancelled);
            }
            let latents = Tensor::stack(&xs, 0)?;
            let control = Tensor::stack(&ctrl, 0)?;
            let (uncond, cond) = self.nets.predict(
                &latents,
                self.timesteps[s],
                &control,
                self.params.control_scale,
            )?;
            self.counters.network_calls.fetch_add(1, Ordering::Relaxed);
            progress.window_done(s, self.steps(), w);
            Ok(Entry::Eps { uncond, cond })
        })?;
        match entry {
            Entry::Eps { uncond, cond } => Ok((uncond, cond)),
            _ => Err(EngineError::Input(format!(
                "internal: cache entry of eps({s}, {w}) has the wrong kind"
            ))),
        }
    }

    /// The final RGB image `[3, H, W]` (f32, [0, 1]) of frame `f`.
    pub fn image(&self, f: usize, progress: &dyn Progress) -> Result<Tensor> {
        if f >= self.plan.len() {
            return Err(EngineError::Input(format!(
                "frame {f} is outside the clip of {} frames",
                self.plan.len()
            )));
        }
        let s = self.steps();
        let key = KeyHasher::tagged("image").key(self.x_key(s, f)?).finish();
        let entry = self.memoised(key, EntryKind::Image, || {
            let x = self.latent(s, f, progress)?;
            let img = self.nets.decode(&x)?.to_dtype(DType::F32)?;
            self.counters.decodes.fetch_add(1, Ordering::Relaxed);
            Ok(Entry::Image(img))
        })?;
        match entry {
            Entry::Image(x) => Ok(x),
            _ => Err(EngineError::Input(format!(
                "internal: cache entry of image {f} has the wrong kind"
            ))),
        }
    }

    /// The content key of the noise predictions of window `window` at step `step` (0-based): the
    /// name of its entry and of its lease in a shared store.
    pub fn window_key(&self, step: usize, window: usize) -> Result<Key> {
        if step >= self.steps() || window >= self.plan.windows().len() {
            return Err(EngineError::Input(format!(
                "window {window} at step {step} is outside the plan of {} windows and {} steps",
                self.plan.windows().len(),
                self.steps()
            )));
        }
        self.eps_key(step, window)
    }

    /// The frames whose control images a request for `frames` reads (for GetFramesNeeded).
    pub fn frames_needed(&self, frames: std::ops::Range<usize>) -> std::ops::Range<usize> {
        self.plan.cone(frames, self.steps())
    }
}
