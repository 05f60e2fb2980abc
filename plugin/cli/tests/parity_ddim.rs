//! DDIM parity against diffusers 0.42.1 `DDIMScheduler` (fixtures: `tests/fixtures/ddim.safetensors`,
//! made by `fixtures_vae_clip.py`). Timesteps must be identical and ᾱ bit-exact in f32; the
//! trajectories are compared element-wise in f32 and their max errors printed.
use std::collections::HashMap;
use std::path::PathBuf;

use anchor_engine::sampler::ddim::{DdimConfig, DdimScheduler};
use candle_core::{Device, IndexOp, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load() -> HashMap<String, Tensor> {
    let p = fixtures().join("ddim.safetensors");
    match candle_core::safetensors::load(&p, &Device::Cpu) {
        Ok(m) => m,
        Err(e) => panic!("cannot read {}: {e}", p.display()),
    }
}

fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    match m.get(k) {
        Some(t) => t,
        None => panic!("fixture key {k} missing"),
    }
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0));
    d.and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

fn max_abs_scale(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::NAN)
}

fn sched(dir: &str, steps: usize) -> DdimScheduler {
    let cfg = DdimConfig::from_file(
        &fixtures()
            .join("tiny")
            .join(dir)
            .join("scheduler_config.json"),
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    DdimScheduler::new(cfg, steps).unwrap_or_else(|e| panic!("scheduler: {e}"))
}

fn timesteps_of(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|x| x as usize)
        .collect()
}

#[test]
fn sd15_timesteps_and_alphas_are_exact() {
    let m = load();
    for steps in [20usize, 25] {
        let s = sched("scheduler", steps);
        let want = timesteps_of(get(&m, &format!("timesteps_{steps}")));
        assert_eq!(
            s.timesteps(),
            want.as_slice(),
            "timesteps for {steps} steps"
        );
        println!("{steps} steps: timesteps identical {:?}", s.timesteps());
    }
    // 20 steps are 951, 901, …, 1.
    let s20 = sched("scheduler", 20);
    assert_eq!(s20.timesteps()[0], 951);
    assert_eq!(s20.timesteps()[19], 1);

    let want: Vec<f32> = get(&m, "alphas_cumprod").to_vec1().unwrap_or_default();
    let got = s20.alphas_cumprod();
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| ulps(*a, *b))
        .max()
        .unwrap_or(u32::MAX);
    println!(
        "alphas_cumprod: {} values, max difference {worst} ulp (f32)",
        got.len()
    );
    assert_eq!(worst, 0, "alphas_cumprod must be bit-exact in f32");
    let fin: Vec<f32> = get(&m, "final_alpha_cumprod").to_vec1().unwrap_or_default();
    assert_eq!(s20.final_alpha_cumprod().to_bits(), fin[0].to_bits());
}

#[test]
fn sd15_trajectory_25_steps_matches() {
    let m = load();
    let s = sched("scheduler", 25);
    let eps = get(&m, "traj.eps");
    let prev_ref = get(&m, "traj.prev_sample");
    let pred_ref = get(&m, "traj.pred_original_sample");
    let mut x = get(&m, "traj.x0").clone();
    let mut worst_prev = 0f32;
    let mut worst_pred = 0f32;
    for (i, &t) in s.timesteps().iter().enumerate() {
        let e = eps.i(i).unwrap_or_else(|e| panic!("{e}"));
        let out = s.step(&e, t, &x).unwrap_or_else(|e| panic!("step: {e}"));
        let pr = prev_ref.i(i).unwrap_or_else(|e| panic!("{e}"));
        let po = pred_ref.i(i).unwrap_or_else(|e| panic!("{e}"));
        worst_prev = worst_prev.max(max_abs(&out.prev_sample, &pr) / max_abs_scale(&pr).max(1.0));
        worst_pred =
            worst_pred.max(max_abs(&out.pred_original_sample, &po) / max_abs_scale(&po).max(1.0));
        // Continue from the reference state so that each step is checked on its own.
        x = pr;
    }
    println!("25-step trajectory: prev_sample max rel err {worst_prev:e}, pred_original_sample {worst_pred:e}");
    assert!(worst_prev <= 1e-6, "prev_sample error {worst_prev}");
    assert!(
        worst_pred <= 1e-6,
        "pred_original_sample error {worst_pred}"
    );

    // The chained run (own state fed back) stays within the same bound.
    let mut x = get(&m, "traj.x0").clone();
    for (i, &t) in s.timesteps().iter().enumerate() {
        let e = eps.i(i).unwrap_or_else(|e| panic!("{e}"));
        x = s
            .step(&e, t, &x)
            .unwrap_or_else(|e| panic!("step: {e}"))
            .prev_sample;
    }
    let last = prev_ref.i(24).unwrap_or_else(|e| panic!("{e}"));
    let chained = max_abs(&x, &last) / max_abs_scale(&last).max(1.0);
    println!("25-step chained: final sample max rel err {chained:e}");
    assert!(chained <= 1e-5);

    let clean = get(&m, "add_noise.clean");
    let noise = get(&m, "add_noise.noise");
    let noisy = s
        .add_noise(clean, noise, 501)
        .unwrap_or_else(|e| panic!("{e}"));
    let d = max_abs(&noisy, get(&m, "add_noise.t501"));
    println!("add_noise(t=501): max abs err {d:e}");
    assert!(d <= 1e-6);
    assert_eq!(s.init_noise_sigma(), 1.0);
}

#[test]
fn vprediction_clip_trailing_linear_variant_matches() {
    let m = load();
    let s = sched("scheduler_vpred", 10);
    let want = timesteps_of(get(&m, "vpred.timesteps_10"));
    assert_eq!(s.timesteps(), want.as_slice());
    let want_a: Vec<f32> = get(&m, "vpred.alphas_cumprod")
        .to_vec1()
        .unwrap_or_default();
    let worst = s
        .alphas_cumprod()
        .iter()
        .zip(&want_a)
        .map(|(a, b)| ulps(*a, *b))
        .max()
        .unwrap_or(u32::MAX);
    println!(
        "v-pred variant: timesteps {:?}, alphas max {worst} ulp",
        s.timesteps()
    );
    assert_eq!(worst, 0);
    let mo = get(&m, "vpred.model_output");
    let prev_ref = get(&m, "vpred.prev_sample");
    let pred_ref = get(&m, "vpred.pred_original_sample");
    let mut x = get(&m, "vpred.x0").clone();
    let mut worst_prev = 0f32;
    let mut worst_pred = 0f32;
    for (i, &t) in s.timesteps().iter().enumerate() {
        let e = mo.i(i).unwrap_or_else(|e| panic!("{e}"));
        let out = s.step(&e, t, &x).unwrap_or_else(|e| panic!("{e}"));
        let pr = prev_ref.i(i).unwrap_or_else(|e| panic!("{e}"));
        let po = pred_ref.i(i).unwrap_or_else(|e| panic!("{e}"));
        worst_prev = worst_prev.max(max_abs(&out.prev_sample, &pr) / max_abs_scale(&pr).max(1.0));
        worst_pred =
            worst_pred.max(max_abs(&out.pred_original_sample, &po) / max_abs_scale(&po).max(1.0));
        x = pr;
    }
    println!("v-pred variant: prev_sample max rel err {worst_prev:e}, pred_original_sample {worst_pred:e}");
    assert!(worst_prev <= 1e-6 && worst_pred <= 1e-6);
}

#[test]
fn bad_scheduler_configs_are_named_errors() {
    let dir = std::env::temp_dir().join(format!("mya-ddim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let p = dir.join("scheduler_config.json");
    // Missing file.
    let e = DdimConfig::from_file(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("missing: {e}");
    assert!(e.contains("scheduler_config.json") && e.contains("does not exist"));
    // Another architecture's config.
    std::fs::write(
        &p,
        r#"{"_class_name": "UNet2DConditionModel", "in_channels": 4}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = DdimConfig::from_file(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("wrong class: {e}");
    assert!(e.contains("UNet2DConditionModel"));
    // Unsupported option.
    std::fs::write(
        &p,
        r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = DdimConfig::from_file(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("thresholding: {e}");
    assert!(e.contains("thresholding"));
    // Too many steps.
    let e = DdimScheduler::new(DdimConfig::default(), 1001)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("steps: {e}");
    assert!(e.contains("1001"));
    let _ = std::fs::remove_dir_all(&dir);
}
