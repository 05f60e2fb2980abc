//! DDIM sampler (Song et al. 2020, "Denoising Diffusion Implicit Models", arXiv 2010.02502),
//! built from a diffusers `scheduler_config.json` and matching diffusers' `DDIMScheduler` in f32.
//!
//! candle-transformers' DDIM has the same timesteps but computes ᾱ in f64, ignores
//! `set_alpha_to_one` and `clip_sample`, and does not return x̂₀, so this file has its own math.
//! As the reference's `DDIMScheduler`: "leading" spacing + `steps_offset` (951…1 for 20 steps), `final_alpha_cumprod
//! = ᾱ[0]` when `set_alpha_to_one` is false, no x̂₀ clipping for SD1.5, eta = 0.
//!
//! Numerics follow PyTorch so that timesteps and ᾱ are bit-exact in f32:
//! `betas = linspace(√β₀, √β₁, T, f32)²` (torch's two-sided, fused-multiply-add linspace), `ᾱ = cumprod(1 − β)` with a
//! double accumulator rounded to f32 per element (torch's CPU cumprod), and each `step` applies the
//! per-element operations in diffusers' order with f32 scalars.
use serde::Deserialize;

use candle_core::Tensor;

use crate::error::{EngineError, Result};

/// `beta_schedule` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β linear in `[beta_start, beta_end]`.
    Linear,
    /// √β linear, then squared (SD1.5).
    #[default]
    ScaledLinear,
}

/// `prediction_type` of the config: what the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise ε (SD1.5).
    #[default]
    Epsilon,
    /// v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022).
    VPrediction,
    /// x₀ directly.
    Sample,
}

/// `timestep_spacing` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `arange(n)·(T//n) + steps_offset`, reversed (SD1.5, the reference).
    #[default]
    Leading,
    /// `round(arange(T, 0, −T/n)) − 1`.
    Trailing,
    /// `round(linspace(0, T−1, n))`, reversed.
    Linspace,
}

/// The diffusers `scheduler_config.json` fields DDIM uses; defaults are SD1.5's.
///
/// The SD1.5 folder holds a PNDM config; DDIM reads the same keys (as `DDIMScheduler.from_pretrained`
/// does), and unknown keys (`skip_prk_steps`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    /// Number of training timesteps T.
    pub num_train_timesteps: usize,
    /// β at t = 0.
    pub beta_start: f64,
    /// β at t = T−1.
    pub beta_end: f64,
    /// How β moves from start to end.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas (overrides the schedule when present).
    pub trained_betas: Option<Vec<f64>>,
    /// Clip x̂₀ to ±`clip_sample_range`.
    pub clip_sample: bool,
    /// The clipping range.
    pub clip_sample_range: f64,
    /// ᾱ used past the last step: 1 when true, else ᾱ[0].
    pub set_alpha_to_one: bool,
    /// Added to every leading timestep.
    pub steps_offset: usize,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding (Imagen); not supported, must be false.
    pub thresholding: bool,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Zero terminal SNR rescaling; not supported, must be false.
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            // The SD1.5 config says false; diffusers' class default is true.
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: false,
            steps_offset: 1,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DdimConfig {
    /// Reads `scheduler_config.json` (a missing key takes the SD1.5 value above).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = crate::weights::read_text(path)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::config(path, e.to_string()))?;
        if let Some(name) = json.get("_class_name").and_then(|v| v.as_str()) {
            if !name.ends_with("Scheduler") {
                return Err(EngineError::config(
                    path,
                    format!("this is a config for {name}, not for a scheduler"),
                ));
            }
        }
        let cfg: Self =
            serde_json::from_value(json).map_err(|e| EngineError::config(path, e.to_string()))?;
        cfg.validate().map_err(|m| EngineError::config(path, m))?;
        Ok(cfg)
    }

    /// Checks values that the sampler cannot handle; the message quotes them.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_train_timesteps < 2 {
            return Err(format!(
                "num_train_timesteps = {} (expected at least 2)",
                self.num_train_timesteps
            ));
        }
        if self.thresholding {
            return Err("thresholding = true is not supported (expected false)".into());
        }
        if self.rescale_betas_zero_snr {
            return Err("rescale_betas_zero_snr = true is not supported (expected false)".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(format!(
                    "trained_betas has {} values, num_train_timesteps is {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
        }
        Ok(())
    }
}

/// torch's f32 `linspace(start, end, n)`: the first half counts up from `start`, the second half
/// down from `end` (aten `RangeFactoriesKernel`), with an f32 step and a fused multiply-add per
/// element, as torch 2.15's vectorised CPU kernel computes it (checked bit-exact on 1000 values for
/// both beta schedules; plain multiply-then-add differs in ~15% of them by 1 ulp).
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - i - 1) as f32, end)
            }
        })
        .collect()
}

/// Output of one DDIM step.
#[derive(Debug, Clone)]
pub struct DdimStepOutput {
    /// x_{t−1}.
    pub prev_sample: Tensor,
    /// x̂₀, the model's estimate of the clean sample.
    pub pred_original_sample: Tensor,
}

/// A DDIM sampler for a fixed number of inference steps (eta = 0, deterministic).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<usize>,
    num_inference_steps: usize,
}

impl DdimScheduler {
    /// Builds the schedule for `num_inference_steps` (diffusers `set_timesteps`).
    pub fn new(config: DdimConfig, num_inference_steps: usize) -> Result<Self> {
        config
            .validate()
            .map_err(|m| EngineError::config("scheduler_config.json", m))?;
        let t = config.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > t {
            return Err(EngineError::Input(format!(
                "{num_inference_steps} sampling steps requested; expected 1..={t}"
            )));
        }
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
            (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
            (None, BetaSchedule::Linear) => {
                torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, t)
            }
            (None, BetaSchedule::ScaledLinear) => torch_linspace_f32(
                config.beta_start.sqrt() as f32,
                config.beta_end.sqrt() as f32,
                t,
            )
            .into_iter()
            .map(|x| x * x)
            .collect(),
        };
        let mut alphas_cumprod = Vec::with_capacity(t);
        let mut acc = 1f64;
        for b in &betas {
            let alpha = 1f32 - b;
            acc *= alpha as f64;
            alphas_cumprod.push(acc as f32);
        }
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let n = num_inference_steps;
        let timesteps: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = t / n;
                (0..n)
                    .rev()
                    .map(|i| i * ratio + config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                // np.round(np.arange(T, 0, -T/n)) - 1
                let ratio = t as f64 / n as f64;
                (0..n)
                    .map(|i| {
                        let v = (t as f64 - i as f64 * ratio).round_ties_even();
                        (v as usize).saturating_sub(1)
                    })
                    .collect()
            }
            TimestepSpacing::Linspace => {
                // numpy: linspace(0, T-1, n) = arange(n) * ((T-1)/(n-1)).
                let step = if n == 1 {
                    0.0
                } else {
                    (t - 1) as f64 / (n - 1) as f64
                };
                (0..n)
                    .rev()
                    .map(|i| {
                        let v = if i + 1 == n {
                            (t - 1) as f64
                        } else {
                            i as f64 * step
                        };
                        v.round_ties_even() as usize
                    })
                    .collect()
            }
        };
        if let Some(&bad) = timesteps.iter().find(|&&x| x >= t) {
            return Err(EngineError::Input(format!(
                "timestep {bad} is out of range 0..{t} (steps_offset = {}); lower steps_offset",
                config.steps_offset
            )));
        }
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: n,
        })
    }

    /// The config.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// The inference timesteps, in sampling order (descending).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// ᾱ_t for every training timestep, f32 as diffusers computes it.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ᾱ used after the last step.
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// σ of the initial noise: 1 for DDIM.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// DDIM needs no input scaling (identity).
    pub fn scale_model_input(&self, sample: Tensor, _timestep: usize) -> Tensor {
        sample
    }

    fn alpha_at(&self, t: usize) -> Result<f32> {
        self.alphas_cumprod.get(t).copied().ok_or_else(|| {
            EngineError::Input(format!(
                "timestep {t} is out of range 0..{}",
                self.alphas_cumprod.len()
            ))
        })
    }

    /// One deterministic DDIM step from `t` (eta = 0), DDIM paper eq. (12):
    ///
    /// x_{t−1} = √ᾱ_{t−1} · x̂₀ + √(1 − ᾱ_{t−1}) · ε̂, with x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
    ///
    /// where t−1 means `t − T/n` and ᾱ past the end is `final_alpha_cumprod`. The σ_t term of
    /// eq. (12) vanishes for eta = 0 (eq. 16).
    pub fn step(
        &self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
    ) -> Result<DdimStepOutput> {
        let ratio = self.config.num_train_timesteps / self.num_inference_steps;
        let alpha_t = self.alpha_at(timestep)?;
        let alpha_prev = match timestep.checked_sub(ratio) {
            Some(p) => self.alpha_at(p)?,
            None => self.final_alpha_cumprod,
        };
        let beta_t = 1f32 - alpha_t;
        let dtype = sample.dtype();
        let dev = sample.device();
        // 0-d f32 scalars, as diffusers uses 0-d tensors; `broadcast_*` keeps the op order and
        // rounds like torch (an affine multiply-add would not for the divisions).
        let scalar = |v: f32| -> Result<Tensor> { Ok(Tensor::new(v, dev)?.to_dtype(dtype)?) };
        let sqrt_alpha_t = scalar(alpha_t.sqrt())?;
        let sqrt_beta_t = scalar(beta_t.sqrt())?;
        let (x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => {
                let x0 = sample
                    .broadcast_sub(&model_output.broadcast_mul(&sqrt_beta_t)?)?
                    .broadcast_div(&sqrt_alpha_t)?;
                (x0, model_output.clone())
            }
            PredictionType::Sample => {
                let eps = sample
                    .broadcast_sub(&model_output.broadcast_mul(&sqrt_alpha_t)?)?
                    .broadcast_div(&sqrt_beta_t)?;
                (model_output.clone(), eps)
            }
            PredictionType::VPrediction => {
                let x0 = sample
                    .broadcast_mul(&sqrt_alpha_t)?
                    .broadcast_sub(&model_output.broadcast_mul(&sqrt_beta_t)?)?;
                let eps = model_output
                    .broadcast_mul(&sqrt_alpha_t)?
                    .broadcast_add(&sample.broadcast_mul(&sqrt_beta_t)?)?;
                (x0, eps)
            }
        };
        // diffusers clips x̂₀ but keeps ε̂ unclipped (`use_clipped_model_output` defaults to false).
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)?
        } else {
            x0
        };
        // eta = 0: std_dev_t = 0, so the direction coefficient is √(1 − ᾱ_{t−1} − 0).
        let dir = scalar((1f32 - alpha_prev).sqrt())?;
        let sqrt_alpha_prev = scalar(alpha_prev.sqrt())?;
        let prev = x0
            .broadcast_mul(&sqrt_alpha_prev)?
            .broadcast_add(&eps.broadcast_mul(&dir)?)?;
        Ok(DdimStepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    /// Forward diffusion q(x_t | x₀): √ᾱ_t x₀ + √(1 − ᾱ_t) ε.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: usize) -> Result<Tensor> {
        let a = self.alpha_at(timestep)?;
        let dtype = original.dtype();
        let dev = original.device();
        let sa = Tensor::new(a.sqrt(), dev)?.to_dtype(dtype)?;
        let sb = Tensor::new((1f32 - a).sqrt(), dev)?.to_dtype(dtype)?;
        Ok(original
            .broadcast_mul(&sa)?
            .broadcast_add(&noise.broadcast_mul(&sb)?)?)
    }
}
