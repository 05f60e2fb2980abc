//! Parity of the temporal engine with the reference's joint denoising of a whole clip
//! (issue 4 "Done when"), on the tiny random models, CPU, f32.
//!
//! The reference is `tests/fixtures/fixtures_temporal.py`: 11 frames, window 4, overlap 1
//! (windows [0,4) [3,7) [6,10) [9,11), the short tail included), 4 DDIM steps, CFG 7.5, control
//! scale 2.0, one injected noise latent repeated over every frame. The engine serves frames on
//! demand, in a shuffled order, and each frame's latents after every step must equal the
//! reference's within 1e-4 (max-abs, absolute), with exactly `windows × steps` network calls.
//!
//! Two clips: "stock" (the tiny ControlNet as it is) and "gain4" (its conditioning embedding
//! weights ×4, see `control_sensitive` in the fixture script). The stock ControlNet nearly ignores
//! the control, so its frames stay almost equal and wrong windowing moves its latents by only
//! ~2e-4; in the gain4 clip the same mistakes move them by 0.4–0.8 (the fixture's `gap.*`
//! metadata), so that clip is what proves the windowing.
//!
//! Besides the end-to-end tests, three component tests localise a failure: the appearance and
//! negative tokens, each window's eps from the reference's own latents, and fusion + CFG + DDIM
//! from the reference's own eps.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anchor_engine::model::BodyModel;
use anchor_engine::networks::controlnet::ControlNetModel;
use anchor_engine::networks::unet::ControlResiduals;
use anchor_engine::pipeline::{self, BodyNetworks, DdimStep, PoseSequence};
use anchor_engine::sampler::ddim::DdimScheduler;
use anchor_engine::temporal::{
    Cache, ControlFrames, Counters, Fusion, KeyHasher, NoProgress, SamplingParams, StepScheduler,
    Tail, WindowNetworks, WindowPlan,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Max-abs error allowed on latents, eps, tokens and images (issue 4).
const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn temporal_dir() -> PathBuf {
    fixtures().join("temporal")
}

/// The tensors and settings of `temporal/temporal.safetensors`.
struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load() -> TestResult<Self> {
        let path = temporal_dir().join("temporal.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "{}: {e} (run tests/fixtures/fixtures_temporal.py)",
                path.display()
            )
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(Self { tensors, meta })
    }

    fn get(&self, key: &str) -> TestResult<&Tensor> {
        Ok(self
            .tensors
            .get(key)
            .ok_or_else(|| format!("fixture lacks tensor {key}"))?)
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> TestResult<T>
    where
        T::Err: std::error::Error + 'static,
    {
        let v = self
            .meta
            .get(key)
            .ok_or_else(|| format!("fixture metadata lacks {key}"))?;
        Ok(v.parse::<T>()?)
    }

    /// Reference latents `[L, 4, h, w]` after `s` steps (`s = 0`: the noise on every frame).
    fn latents(&self, clip: Clip, s: usize) -> TestResult<Tensor> {
        if s == 0 {
            let noise = noise()?;
            let frames: usize = self.num("frames")?;
            return Ok(noise.unsqueeze(0)?.repeat((frames, 1, 1, 1))?);
        }
        Ok(self
            .get(&format!("{}latents_step{s}", clip.prefix()))?
            .clone())
    }
}

fn noise() -> TestResult<Tensor> {
    let map =
        candle_core::safetensors::load(temporal_dir().join("noise.safetensors"), &Device::Cpu)?;
    Ok(map
        .get("noise")
        .ok_or("noise.safetensors lacks \"noise\"")?
        .clone())
}

/// Which ControlNet the clip was made with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Clip {
    Stock,
    Gain4,
}

impl Clip {
    fn prefix(self) -> &'static str {
        match self {
            Clip::Stock => "",
            Clip::Gain4 => "gain4.",
        }
    }
}

/// `BodyModel` of `tests/fixtures/tiny` (CPU, f32); for [`Clip::Gain4`] the ControlNet is rebuilt
/// with `controlnet_cond_embedding.blocks.*.weight` multiplied by the fixture's gain (a power of
/// two, so exact), as `control_sensitive` in the fixture script does.
fn load_model(fx: &Fixture, clip: Clip) -> TestResult<BodyModel> {
    let tiny = fixtures().join("tiny");
    let mut model = BodyModel::load(&tiny, DType::F32, &Device::Cpu)?;
    if clip == Clip::Gain4 {
        let gain: f64 = fx.num("embed_gain")?;
        let file = tiny.join("controlnet/diffusion_pytorch_model.safetensors");
        let mut scaled = 0;
        let mut map = HashMap::new();
        for (k, v) in candle_core::safetensors::load(&file, &Device::Cpu)? {
            let v = v.to_dtype(DType::F32)?;
            let v = if k.starts_with("controlnet_cond_embedding.blocks.") && k.ends_with(".weight")
            {
                scaled += 1;
                v.affine(gain, 0.0)?
            } else {
                v
            };
            map.insert(k, v);
        }
        assert_eq!(
            scaled, 6,
            "the tiny conditioning embedding has 6 inner convs"
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        model.controlnet = ControlNetModel::new(vb, &model.configs.controlnet)?;
    }
    Ok(model)
}

/// Max-abs difference of two tensors of equal shape.
fn max_abs(got: &Tensor, want: &Tensor) -> TestResult<f32> {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let d = (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn params(fx: &Fixture) -> TestResult<SamplingParams> {
    Ok(SamplingParams {
        guidance: fx.num("guidance")?,
        control_scale: fx.num("control_scale")?,
    })
}

fn plan(fx: &Fixture) -> TestResult<WindowPlan> {
    let plan = WindowPlan::new(
        fx.num("frames")?,
        fx.num("window")?,
        fx.num("overlap")?,
        Tail::Paper,
        Fusion::Flat,
    )?;
    let starts: Vec<(usize, usize)> = plan.windows().iter().map(|w| (w.start, w.end)).collect();
    assert_eq!(
        starts,
        vec![(0, 4), (3, 7), (6, 10), (9, 11)],
        "window plan"
    );
    Ok(plan)
}

fn scheduler(fx: &Fixture, model: &BodyModel) -> TestResult<DdimStep> {
    let steps: usize = fx.num("steps")?;
    let sched = DdimStep(DdimScheduler::new(model.configs.scheduler.clone(), steps)?);
    let want: Vec<i64> = fx.get("timesteps")?.to_vec1::<i64>()?;
    let got: Vec<i64> = sched.timesteps().iter().map(|&t| t as i64).collect();
    assert_eq!(got, want, "DDIM timesteps");
    Ok(sched)
}

fn poses(fx: &Fixture) -> TestResult<PoseSequence> {
    let size: usize = fx.num("size")?;
    let poses = PoseSequence::open(
        &temporal_dir().join("poses"),
        (size, size),
        DType::F32,
        &Device::Cpu,
    )?;
    assert_eq!(poses.len(), fx.num::<usize>("frames")?, "pose frame count");
    Ok(poses)
}

fn networks<'m>(
    model: &'m BodyModel,
    clip: Clip,
    residuals: ControlResiduals,
) -> TestResult<BodyNetworks<'m>> {
    let appearance = pipeline::encode_appearance(model, &temporal_dir().join("appearance.png"))?;
    let id = KeyHasher::tagged(clip.prefix())
        .key(pipeline::model_identity(model)?)
        .finish();
    Ok(BodyNetworks::new(model, &appearance, id, residuals)?)
}

/// A fixed shuffle of `0..n` (xorshift64 Fisher–Yates), so the request order is not sequential.
fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    order
}

/// The full engine on one clip: frames requested in a shuffled order, then every (step, frame)
/// latent compared with the reference (errors printed per step), and the decoded images.
fn run_clip(clip: Clip, check_images: bool) -> TestResult {
    let started = Instant::now();
    let fx = Fixture::load()?;
    let model = load_model(&fx, clip)?;
    let nets = networks(&model, clip, ControlResiduals::Original)?;
    let sched = scheduler(&fx, &model)?;
    let poses = poses(&fx)?;
    let plan = plan(&fx)?;
    let windows = plan.windows().len();
    let size: usize = fx.num("size")?;
    let (frames, steps): (usize, usize) = (fx.num("frames")?, fx.num("steps")?);
    let noise_path = temporal_dir().join("noise.safetensors");
    let injected = pipeline::initial_noise(0, Some(&noise_path), (4, size / 8, size / 8))?;
    let cache = Cache::new(1 << 30);
    let counters = Counters::default();
    let denoiser = pipeline::denoiser(
        &nets,
        &sched,
        &poses,
        &cache,
        &counters,
        plan,
        params(&fx)?,
        injected,
    )?;
    let loaded = started.elapsed();

    let order = shuffled(frames, 0x5EED_0004);
    println!("[{clip:?}] request order {order:?}");
    let t0 = Instant::now();
    for &f in &order {
        denoiser.latent(steps, f, &NoProgress)?;
    }
    let denoise_time = t0.elapsed();
    let calls = counters
        .network_calls
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "[{clip:?}] network calls for the full pass: {calls} (windows {windows} × steps {steps})"
    );
    assert_eq!(
        calls,
        (windows * steps) as u64,
        "network calls of a full pass"
    );
    assert_eq!(
        fx.num::<u64>("network_calls")?,
        calls,
        "the reference's call count"
    );

    let noise = noise()?;
    let mut worst = 0f32;
    for s in 0..=steps {
        let want = fx.latents(clip, s)?;
        let mut err = 0f32;
        for f in 0..frames {
            let got = denoiser.latent(s, f, &NoProgress)?;
            if s == 0 {
                assert_eq!(
                    max_abs(&got, &noise)?,
                    0.0,
                    "x(0, {f}) is the injected noise"
                );
            }
            err = err.max(max_abs(&got, &want.get(f)?)?);
        }
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        println!(
            "[{clip:?}] step {s}: latents max-abs error {err:.3e} (reference max-abs {scale:.2})"
        );
        worst = worst.max(err);
    }
    // Reading every step back was served from the cache.
    let after = counters
        .network_calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, calls, "reading cached latents made network calls");

    if check_images {
        let want = fx.get("images")?;
        let mut err = 0f32;
        for &f in &order {
            let got = denoiser.image(f, &NoProgress)?;
            err = err.max(max_abs(&got, &want.get(f)?)?);
        }
        println!("[{clip:?}] decoded images: max-abs error {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "[{clip:?}] decoded images: max-abs error {err:e} > {TOLERANCE:e}"
        );
        assert_eq!(
            counters.decodes.load(std::sync::atomic::Ordering::Relaxed),
            frames as u64
        );
    }
    println!(
        "[{clip:?}] load {:.2}s, denoise {:.2}s, total {:.2}s",
        loaded.as_secs_f64(),
        denoise_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        worst <= TOLERANCE,
        "[{clip:?}] latents: max-abs error {worst:e} > {TOLERANCE:e}"
    );
    Ok(())
}

#[test]
fn joint_denoising_matches_reference_stock() -> TestResult {
    run_clip(Clip::Stock, true)
}

#[test]
fn joint_denoising_matches_reference_control_sensitive() -> TestResult {
    run_clip(Clip::Gain4, false)
}

/// Localises a failure to the conditioning: appearance tokens (CLIP vision on the committed PNG)
/// and the empty-prompt negative.
#[test]
fn appearance_and_negative_tokens_match() -> TestResult {
    let fx = Fixture::load()?;
    let model = load_model(&fx, Clip::Stock)?;
    let cond = pipeline::encode_appearance(&model, &temporal_dir().join("appearance.png"))?;
    let e_cond = max_abs(&cond, fx.get("cond_tokens")?)?;
    let e_uncond = max_abs(&model.negative_embedding, fx.get("uncond_tokens")?)?;
    println!("appearance tokens: max-abs error {e_cond:.3e}; negative tokens: {e_uncond:.3e}");
    assert!(e_cond <= TOLERANCE, "appearance tokens: {e_cond:e}");
    assert!(e_uncond <= TOLERANCE, "negative tokens: {e_uncond:e}");
    Ok(())
}

/// Localises a failure to one window's networks: each window's (uncond, cond) eps at every step,
/// computed from the reference's own latents of that step.
fn window_eps(clip: Clip) -> TestResult {
    let fx = Fixture::load()?;
    let model = load_model(&fx, clip)?;
    let nets = networks(&model, clip, ControlResiduals::Original)?;
    let sched = scheduler(&fx, &model)?;
    let poses = poses(&fx)?;
    let plan = plan(&fx)?;
    let scale: f64 = fx.num("control_scale")?;
    let mut worst = 0f32;
    for (s, &t) in sched.timesteps().iter().enumerate() {
        let x = fx.latents(clip, s)?;
        let mut line = Vec::new();
        for (w, range) in plan.windows().iter().enumerate() {
            let latents = x.narrow(0, range.start, range.len())?;
            let control = Tensor::stack(
                &range
                    .clone()
                    .map(|f| poses.frame(f))
                    .collect::<Result<Vec<_>, _>>()?,
                0,
            )?;
            let (u, c) = nets.predict(&latents, t, &control, scale)?;
            let p = clip.prefix();
            let eu = max_abs(&u, fx.get(&format!("{p}eps_uncond_s{s}_w{w}"))?)?;
            let ec = max_abs(&c, fx.get(&format!("{p}eps_cond_s{s}_w{w}"))?)?;
            line.push(format!("w{w} {eu:.2e}/{ec:.2e}"));
            worst = worst.max(eu).max(ec);
        }
        println!(
            "[{clip:?}] step {s} (t={t}) eps uncond/cond max-abs error: {}",
            line.join(", ")
        );
    }
    assert!(
        worst <= TOLERANCE,
        "[{clip:?}] window eps: max-abs error {worst:e}"
    );
    Ok(())
}

#[test]
fn window_eps_match_reference_stock() -> TestResult {
    window_eps(Clip::Stock)
}

#[test]
fn window_eps_match_reference_control_sensitive() -> TestResult {
    window_eps(Clip::Gain4)
}

/// Localises a failure to the per-frame fusion, CFG and DDIM: from the reference's eps and
/// latents of step s, the reference's latents of step s + 1 (no networks involved).
#[test]
fn fusion_cfg_ddim_match_reference() -> TestResult {
    let fx = Fixture::load()?;
    let tiny = fixtures().join("tiny");
    let config = anchor_engine::sampler::ddim::DdimConfig::from_file(
        &tiny.join("scheduler/scheduler_config.json"),
    )?;
    let sched = DdimStep(DdimScheduler::new(config, fx.num("steps")?)?);
    let plan = plan(&fx)?;
    let g: f64 = fx.num("guidance")?;
    for clip in [Clip::Stock, Clip::Gain4] {
        let p = clip.prefix();
        for (s, &t) in sched.timesteps().iter().enumerate() {
            let x = fx.latents(clip, s)?;
            let mut next = Vec::new();
            for f in 0..plan.len() {
                let (mut u, mut c) = (None::<Tensor>, None::<Tensor>);
                for &w in plan.covering(f) {
                    let i = f - plan.windows()[w].start;
                    let eu = fx.get(&format!("{p}eps_uncond_s{s}_w{w}"))?.get(i)?;
                    let ec = fx.get(&format!("{p}eps_cond_s{s}_w{w}"))?.get(i)?;
                    u = Some(match u {
                        Some(a) => (a + eu)?,
                        None => eu,
                    });
                    c = Some(match c {
                        Some(a) => (a + ec)?,
                        None => ec,
                    });
                }
                let n = plan.covering(f).len() as f64;
                let (u, c) = (
                    (u.ok_or("uncovered frame")? / n)?,
                    (c.ok_or("uncovered frame")? / n)?,
                );
                let eps = (&u + ((c - &u)? * g)?)?;
                next.push(sched.step(&eps, t, &x.get(f)?)?);
            }
            let err = max_abs(&Tensor::stack(&next, 0)?, &fx.latents(clip, s + 1)?)?;
            println!(
                "[{clip:?}] step {s}: fusion+CFG+DDIM from reference eps, max-abs error {err:.3e}"
            );
            assert!(
                err <= TOLERANCE,
                "[{clip:?}] fusion+CFG+DDIM step {s}: {err:e}"
            );
        }
    }
    Ok(())
}

/// The largest final-latent distance from the reference of the engine run with a given tail rule
/// and residual addition (a wrong one, to show the fixture notices it).
fn final_gap(clip: Clip, tail: Tail, residuals: ControlResiduals) -> TestResult<f32> {
    let fx = Fixture::load()?;
    let model = load_model(&fx, clip)?;
    let nets = networks(&model, clip, residuals)?;
    let sched = scheduler(&fx, &model)?;
    let poses = poses(&fx)?;
    let (frames, steps, size): (usize, usize, usize) =
        (fx.num("frames")?, fx.num("steps")?, fx.num("size")?);
    let plan = WindowPlan::new(
        frames,
        fx.num("window")?,
        fx.num("overlap")?,
        tail,
        Fusion::Flat,
    )?;
    let noise_path = temporal_dir().join("noise.safetensors");
    let injected = pipeline::initial_noise(0, Some(&noise_path), (4, size / 8, size / 8))?;
    let cache = Cache::new(1 << 30);
    let counters = Counters::default();
    let denoiser = pipeline::denoiser(
        &nets,
        &sched,
        &poses,
        &cache,
        &counters,
        plan,
        params(&fx)?,
        injected,
    )?;
    let want = fx.latents(clip, steps)?;
    let mut gap = 0f32;
    for f in 0..frames {
        gap = gap.max(max_abs(
            &denoiser.latent(steps, f, &NoProgress)?,
            &want.get(f)?,
        )?);
    }
    Ok(gap)
}

/// Checks that a wrong variant misses the reference by far more than the tolerance, by the gap
/// the fixture script measured for the same mistake in PyTorch (`meta_key`).
fn check_wrong_variant(what: &str, gap: f32, meta_key: &str) -> TestResult {
    let reference_gap: f32 = Fixture::load()?.num(meta_key)?;
    println!("{what} vs the reference: max-abs {gap:.3e} (PyTorch: {reference_gap:.3e})");
    assert!(
        gap > 100.0 * TOLERANCE,
        "{what} went unnoticed (gap {gap:e})"
    );
    assert!(
        (gap - reference_gap).abs() <= TOLERANCE,
        "{what}: the gap differs from PyTorch's"
    );
    Ok(())
}

/// The control-sensitive clip has teeth: the engine run with a wrong window plan (the tail
/// window shifted back to full length, `--tail full`) must miss the reference by far more than
/// the tolerance (the fixture script measured the same gap in PyTorch: `gap.gain4_tail_full`).
#[test]
fn control_sensitive_clip_detects_wrong_windowing() -> TestResult {
    let gap = final_gap(Clip::Gain4, Tail::Full, ControlResiduals::Original)?;
    check_wrong_variant("[Gain4] --tail full", gap, "gap.gain4_tail_full")
}

/// The reference adds the ControlNet residuals as the original 3D UNet does (in place, the last
/// down residual also entering the mid block); diffusers' addition misses it by thousands of
/// tolerances after 4 steps.
#[test]
fn standard_residuals_miss_the_original_reference() -> TestResult {
    let gap = final_gap(Clip::Stock, Tail::Paper, ControlResiduals::Standard)?;
    check_wrong_variant(
        "[Stock] --control-residuals standard",
        gap,
        "gap.stock_standard_residuals",
    )
}
