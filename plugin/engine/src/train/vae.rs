//! `anchor train-vae`: a KL autoencoder (diffusers `AutoencoderKL`) trained from a deterministic
//! random init on the dataset's frames, so that a small model family can be built from scratch
//! for tiny configs.
//!
//! Loss per step: `recon(decode(z), x) + kl_weight · KL`, with `z = μ + σ·n` (reparameterised),
//! `recon` the per-element mean L1 (default) or MSE, and `KL = mean(½(μ² + σ² − 1 − log σ²))` over
//! latent elements. LDM sums both terms per image instead; with per-element means the default
//! weight 1e-4 keeps the latents close to unit scale without blurring tiny models.
//!
//! The final `vae/config.json` gets `scaling_factor = 1 / std(μ)` measured over the dataset, the
//! way SD's 0.18215 was chosen, so the diffusion model sees unit-variance latents.
//!
//! `--init DIR --decoder-only` fine-tunes the decoder side (`decoder.*`, `post_quant_conv.*`) of
//! a trained VAE, e.g. on the target person's frames after the diffusion model was trained: the
//! encoder is frozen (no KL term), so the latents the UNet learned, and the scaling factor, stay
//! exactly as they were, and only the reconstruction sharpens.
//!
//! The tiny model's CLIP towers are not trained: they stay random-initialised (as in
//! `tests/fixtures/tiny`), a stand-in for the pretrained CLIP ViT-B/32 of the reference. Random
//! towers still map different references to different tokens, which is all the tiny anchor needs.
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, LossRow, TrainerState};
use super::data::{DataOrder, Dataset};
use super::optim::{AdamW, AdamWParams};
use super::params::{self, ParamSet};
use super::{io_err, normals, stream, tags, Result, TrainError};
use crate::networks::vae::AutoencoderKl;
use crate::pipeline::rgb8_to_tensor;

/// Reconstruction term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    Mse,
}

/// Settings of one `anchor train-vae` run.
#[derive(Debug, Clone)]
pub struct VaeTrainConfig {
    /// The `AutoencoderKL` config.json.
    pub config: PathBuf,
    /// JSON-Lines files (the `target` images are used).
    pub data: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Resize every image to this square size.
    pub resolution: Option<usize>,
    /// AdamW settings.
    pub adamw: AdamWParams,
    /// Batch size.
    pub batch_size: usize,
    /// Total steps.
    pub steps: usize,
    /// KL weight.
    pub kl_weight: f64,
    /// Reconstruction term.
    pub recon: ReconLoss,
    /// Seed of init, order and noise.
    pub seed: u64,
    /// Checkpoint interval.
    pub checkpoint_every: usize,
    /// Continue from the newest checkpoint.
    pub resume: bool,
    /// Stop after this many steps in this invocation.
    pub stop_after: Option<usize>,
    /// Device.
    pub device: Device,
    /// Start from this trained VAE folder instead of a random init.
    pub init: Option<PathBuf>,
    /// Train only the decoder side (`decoder.*`, `post_quant_conv.*`); the encoder and the
    /// config's scaling factor are kept.
    pub decoder_only: bool,
}

/// Whether a VAE parameter belongs to the decoder side.
pub fn is_decoder_param(name: &str) -> bool {
    name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct VaeReport {
    /// First step of this invocation.
    pub start_step: usize,
    /// Steps done.
    pub end_step: usize,
    /// Total steps.
    pub total_steps: usize,
    /// Every logged step.
    pub losses: Vec<LossRow>,
    /// Steps per second in this invocation.
    pub steps_per_second: f64,
    /// The final `vae/` folder when the run completed.
    pub model: Option<PathBuf>,
    /// The measured scaling factor written to it.
    pub scaling_factor: Option<f64>,
}

struct VaeTrainer<'a> {
    cfg: &'a VaeTrainConfig,
    data: Dataset,
    order: DataOrder,
    vae: AutoencoderKl,
    params: ParamSet,
    opt: AdamW,
}

impl VaeTrainer<'_> {
    fn images(&self, idx: &[usize]) -> Result<Tensor> {
        let (w, h) = (self.data.width, self.data.height);
        let xs = idx
            .iter()
            .map(|&i| {
                let rgb = self.data.load_rgb(&self.data.samples[i].target)?;
                Ok(rgb8_to_tensor(&rgb, w, h, DType::F32, &self.cfg.device)?.affine(2.0, -1.0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&xs, 0)?)
    }

    fn step(&mut self, s: usize) -> Result<(f32, f32)> {
        let (idx, _) = self.order.batch(s);
        let x = self.images(&idx)?;
        let mut post = self.vae.encode(&x)?;
        if self.cfg.decoder_only {
            // The frozen encoder: no gradient flows into it (and no KL term below).
            post.mean = post.mean.detach();
            post.logvar = post.logvar.detach();
        }
        let mut rng = stream(self.cfg.seed, tags::STEP, s as u64);
        let shape = post.mean.shape().clone();
        let n = Tensor::from_vec(normals(&mut rng, shape.elem_count()), &shape, &Device::Cpu)?
            .to_device(&self.cfg.device)?;
        let z = post.sample(&n)?;
        let recon = self.vae.decode(&z)?;
        let diff = (recon - &x)?;
        let rec = match self.cfg.recon {
            ReconLoss::L1 => diff.abs()?.mean_all()?,
            ReconLoss::Mse => diff.sqr()?.mean_all()?,
        };
        let kl = ((post.mean.sqr()? + post.logvar.exp()?)? - 1.0)?
            .sub(&post.logvar)?
            .affine(0.5, 0.0)?
            .mean_all()?;
        let kl_weight = if self.cfg.decoder_only {
            0.0
        } else {
            self.cfg.kl_weight
        };
        let loss = (rec + (kl * kl_weight)?)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: s + 1,
                what: "loss".into(),
                value,
                last_checkpoint: checkpoint::list(&self.cfg.out)
                    .ok()
                    .and_then(|v| v.last().map(|(_, p)| p.clone())),
            });
        }
        let grads = loss.backward()?;
        let vars = self.trained_vars();
        let norm = super::optim::grad_norm(&grads, vars.iter().map(|(_, v)| v))?;
        self.opt.step(&grads, &Default::default())?;
        Ok((value, norm as f32))
    }

    /// The variables the optimizer updates.
    fn trained_vars(&self) -> Vec<(String, candle_core::Var)> {
        trained(&self.params, self.cfg.decoder_only)
    }

    fn state(&self, step: usize, losses: &[LossRow]) -> TrainerState {
        TrainerState {
            kind: if self.cfg.decoder_only {
                "train-vae-decoder".into()
            } else {
                "train-vae".into()
            },
            step,
            seed: self.cfg.seed,
            batch_size: self.cfg.batch_size,
            dataset_len: self.data.len(),
            total_steps: self.cfg.steps,
            losses: losses.to_vec(),
        }
    }

    /// `1 / std(μ)` over up to 64 images (one at a time).
    fn measure_scaling(&self) -> Result<f64> {
        let mut vals = Vec::new();
        for i in 0..self.data.len().min(64) {
            let x = self.images(&[i])?;
            let m = self.vae.encode(&x)?.mean.detach();
            vals.extend(m.flatten_all()?.to_vec1::<f32>()?);
        }
        let n = vals.len().max(1) as f64;
        let mean = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = vals
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        Ok(1.0 / var.sqrt().max(1e-6))
    }
}

fn trained(params: &ParamSet, decoder_only: bool) -> Vec<(String, candle_core::Var)> {
    params
        .vars()
        .into_iter()
        .filter(|(name, _)| !decoder_only || is_decoder_param(name))
        .collect()
}

/// Runs (or resumes) `anchor train-vae`.
pub fn train_vae(cfg: &VaeTrainConfig, progress: &dyn Fn(&str)) -> Result<VaeReport> {
    if cfg.batch_size == 0 || cfg.checkpoint_every == 0 || cfg.steps == 0 {
        return Err(TrainError::Data(
            "--batch-size, --checkpoint-every and --steps must be at least 1".into(),
        ));
    }
    let data = Dataset::open(&cfg.data, cfg.resolution)?;
    std::fs::create_dir_all(&cfg.out).map_err(io_err(&cfg.out))?;
    let ck_dir = cfg.out.join(checkpoint::CHECKPOINTS);
    checkpoint::remove_partials(&cfg.out)?;
    checkpoint::remove_partials(&ck_dir)?;
    let existing = checkpoint::list(&cfg.out)?;
    if !existing.is_empty() && !cfg.resume {
        return Err(TrainError::Data(format!(
            "{} already holds checkpoints; pass --resume or choose an empty output folder",
            cfg.out.display()
        )));
    }
    let config_path = match &cfg.init {
        Some(dir) => dir.join("config.json"),
        None => cfg.config.clone(),
    };
    let json = params::read_config_json(&config_path)?;
    let (vae, params) = params::build_vae(json, &cfg.device)?;
    let f = vae.config().downsample_factor();
    if !data.width.is_multiple_of(f) || !data.height.is_multiple_of(f) {
        return Err(TrainError::Data(format!(
            "the images are {}×{}; this VAE needs sides divisible by {f}; give --resolution",
            data.width, data.height
        )));
    }
    match &cfg.init {
        Some(dir) => params.load_strict(dir)?,
        None => params.random_init(cfg.seed, |_| true)?,
    }
    let opt = AdamW::new(trained(&params, cfg.decoder_only), cfg.adamw)?;
    let order = DataOrder {
        seed: cfg.seed,
        len: data.len(),
        batch: cfg.batch_size,
    };
    let mut t = VaeTrainer {
        cfg,
        data,
        order,
        vae,
        params,
        opt,
    };
    let trained_count: usize = t.trained_vars().iter().map(|(_, v)| v.elem_count()).sum();
    progress(&format!(
        "{} images at {}×{}, batch {}, {} steps, {} parameters ({} trained)",
        t.data.len(),
        t.data.width,
        t.data.height,
        cfg.batch_size,
        cfg.steps,
        t.params.parameter_count(),
        trained_count
    ));
    let mut losses = Vec::new();
    if let Some((step, dir)) = existing.last().filter(|_| cfg.resume) {
        progress(&format!("resuming from {} (step {step})", dir.display()));
        let state = TrainerState::read(dir)?;
        state.check_resumable(&t.state(0, &[]), dir)?;
        t.params.load_strict(&dir.join("vae"))?;
        let m = checkpoint::load_tensors(&dir.join(checkpoint::OPTIMIZER_FILE), &cfg.device)?;
        t.opt.restore(&m, state.step as u64)?;
        losses = state.losses;
    }
    let start = losses.last().map(|r| r.step).unwrap_or(0);
    let csv = cfg.out.join("loss.csv");
    let plot = cfg.out.join("loss.png");
    super::loss_log::write_csv(&csv, &losses)?;
    let clock = Instant::now();
    let mut end = start;
    for s in start..cfg.steps {
        if cfg.stop_after.is_some_and(|n| s - start >= n) {
            break;
        }
        let (loss, grad_norm) = t.step(s)?;
        end = s + 1;
        let row = LossRow {
            step: end,
            loss,
            grad_norm,
            seconds: clock.elapsed().as_secs_f32(),
        };
        losses.push(row);
        super::loss_log::append_csv(&csv, &row)?;
        progress(&format!("step {end}/{}  loss {loss:.5}", cfg.steps));
        if end.is_multiple_of(cfg.checkpoint_every) || end == cfg.steps {
            let state = t.state(end, &losses);
            let dest = ck_dir.join(checkpoint::step_name(end));
            checkpoint::write_dir_atomically(&dest, |tmp| {
                t.params.save(&tmp.join("vae"))?;
                state.write(tmp)?;
                checkpoint::save_optimizer(tmp, &t.opt)
            })?;
            super::loss_log::write_plot(&plot, &losses)?;
        }
    }
    let secs = clock.elapsed().as_secs_f64();
    let (mut model, mut scaling) = (None, None);
    if end == cfg.steps {
        let dest = cfg.out.join("vae");
        let mut config = t.params.config.clone();
        // A decoder-only run keeps the encoder, so its latents and their scale are unchanged.
        let kept = config
            .get("scaling_factor")
            .and_then(|v| v.as_f64())
            .filter(|_| cfg.decoder_only);
        let sf = match kept {
            Some(sf) => sf,
            None => t.measure_scaling()?,
        };
        if let Some(o) = config.as_object_mut() {
            o.insert("scaling_factor".into(), serde_json::json!(sf));
        }
        let final_params = ParamSet {
            name: "vae".into(),
            map: t.params.map.clone(),
            config,
        };
        checkpoint::write_dir_atomically(&dest, |tmp| final_params.save(tmp))?;
        progress(&format!("vae {} (scaling_factor {sf:.5})", dest.display()));
        model = Some(dest);
        scaling = Some(sf);
    }
    Ok(VaeReport {
        start_step: start,
        end_step: end,
        total_steps: cfg.steps,
        steps_per_second: if secs > 0.0 {
            (end - start) as f64 / secs
        } else {
            0.0
        },
        losses,
        model,
        scaling_factor: scaling,
    })
}
