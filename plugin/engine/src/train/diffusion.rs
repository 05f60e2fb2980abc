//! `anchor train`: the UNet and the ControlNet trained together with the DDPM ε-prediction loss,
//! per frame (2D; the 3D inflation exists only at inference).
//!
//! One step, for a batch of samples `(source, target, reference)`:
//! - `x₀ = scaling_factor · (μ + σ·n)`: a posterior sample of the frozen VAE (the moments of each
//!   target are computed once, at batch size 1, and kept);
//! - `c`: CLIP vision `last_hidden_state` of the reference (frozen, computed once per image);
//! - `t ~ U{0..T−1}` per sample, `ε ~ N(0, I)`, `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε` with the
//!   scaled-linear ᾱ of the base's scheduler config;
//! - `ε̂ = UNet(x_t, t, c, ControlNet(x_t, t, c, source ∈ [0,1]))`, loss `mean((ε̂ − ε)²)` in f32;
//! - backward, optional grad-norm clipping (the reference clips the ControlNet's parameters only,
//!   at 1.0), AdamW on every UNet and ControlNet parameter.
//!
//! Stages differ only in initialisation: `pretrain` takes the UNet from the base model
//! (or a deterministic random init for tiny configs, `--init random`) and makes the ControlNet
//! from it (`from_unet`); `finetune` loads both from a pre-trained folder.
//!
//! The ControlNet runs with conditioning scale 1.0 in training (diffusers' training scripts);
//! inference uses the body scale 2.0.
//!
//! Stage `face` trains the head (face-inpainting) model on the head JSON-Lines format
//! (`train_head.py`): the UNet takes `cat[x_t, mask, masked_latents]` (9 channels for 4 latent
//! channels), built by the inference code's own steps ([`prepare_mask_and_masked_image`],
//! [`downsample_mask`]) with the inverted mask (1 = keep) and a seeded posterior sample of the
//! masked target; the head ControlNet sees the 4-channel `x_t` and the aligned mesh crop. The
//! UNet comes from the base's `head/unet` (or a 9-channel top-level `unet/`, e.g.
//! SD-inpainting), or a random init of `--unet-config`; the ControlNet from the base's
//! `head/controlnet` when present (the reference fine-tunes the pre-trained head ControlNet),
//! else it is made from the UNet as `from_unet` with `in_channels` = latent channels and the
//! latent part of `conv_in` (the reference's comes from the 4-channel SD1.5 UNet).
//! The appearance is the CLIP of the head reference resized to 256² as at inference. The output
//! is a model folder with `head/{unet,controlnet}` that
//! `DiffusionModel::load_part(.., ModelPart::Head, ..)` loads, and `head.png` (the head reference
//! `anchor render --face-model` uses by default) instead of `appearance.png`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, LossRow, TrainerState};
use super::data::{DataOrder, Dataset};
use super::optim::{clip_factor, grad_norm, AdamW, AdamWParams};
use super::params::{self, ParamSet};
use super::validate::{self, ValidationSpec};
use super::{io_err, normals, stream, tags, Result, TrainError};
use crate::face::inpaint::{downsample_mask, prepare_mask_and_masked_image, HEAD_REFERENCE_SIZE};
use crate::face::warp::resize_linear_u8;
use crate::model::{ModelLayout, ModelPart};
use crate::networks::clip::ClipVisionEncoder;
use crate::networks::controlnet::ControlNetModel;
use crate::networks::unet::UNet2DConditionModel;
use crate::networks::unet_blocks::Temporal;
use crate::networks::vae::{AutoencoderKl, DiagonalGaussian};
use crate::pipeline::{read_rgb8, rgb8_to_tensor};
use crate::sampler::ddim::{DdimConfig, DdimScheduler, PredictionType};
use crate::EngineError;

/// Which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// UNet from the base (or random), ControlNet made from the UNet.
    Pretrain,
    /// UNet and ControlNet from a pre-trained folder.
    Finetune,
    /// The head (face-inpainting) model on head data (see the module docs).
    Face,
}

impl Stage {
    fn part(self) -> ModelPart {
        match self {
            Self::Face => ModelPart::Head,
            _ => ModelPart::Body,
        }
    }
}

/// Where the UNet's initial weights come from in `pretrain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnetInit {
    /// The base model's `unet/` weights.
    Base,
    /// Deterministic random init from the seed (tiny configs built from scratch).
    Random,
}

/// Which parameters the gradient-norm clipping sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipScope {
    /// The ControlNet's only, as the reference (`train_body.py:981-983`).
    ControlNet,
    /// Every trained parameter (one global norm).
    All,
}

/// Settings of one `anchor train` run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The stage.
    pub stage: Stage,
    /// Base model folder: VAE, scheduler, text and image encoders, and the UNet (pretrain) or
    /// the UNet and ControlNet (finetune).
    pub base: PathBuf,
    /// A UNet `config.json` to use instead of the base's (pretrain with random init).
    pub unet_config: Option<PathBuf>,
    /// UNet init in pretrain.
    pub init: UnetInit,
    /// JSON-Lines files.
    pub data: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Resize every source/target to this square size.
    pub resolution: Option<usize>,
    /// AdamW settings.
    pub adamw: AdamWParams,
    /// Batch size.
    pub batch_size: usize,
    /// Total steps (takes precedence over `epochs`).
    pub steps: Option<usize>,
    /// Total epochs (passes over the data) when `steps` is not given.
    pub epochs: Option<usize>,
    /// Clip the gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// What the clipping sees.
    pub clip_scope: ClipScope,
    /// ControlNet conditioning scale during training.
    pub conditioning_scale: f64,
    /// `conditioning_embedding_out_channels` of a ControlNet made from the UNet (pretrain); else
    /// the base's `controlnet/config.json` value, else diffusers' `[16, 32, 96, 256]`. Its length
    /// − 1 stride-2 convolutions must match the VAE's downscale.
    pub controlnet_embedding: Option<Vec<usize>>,
    /// The seed of init, data order, timesteps and noise.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Keep only the newest this many checkpoints (0: keep all).
    pub keep_checkpoints: usize,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Stop after this many steps in this invocation (the run can be resumed later).
    pub stop_after: Option<usize>,
    /// Validation renders.
    pub validation: Option<ValidationSpec>,
    /// Render validation frames every this many steps (0: never).
    pub validate_every: usize,
    /// The model's default appearance (`appearance.png`); the first sample's reference if absent.
    pub appearance: Option<PathBuf>,
    /// Device.
    pub device: Device,
}

impl TrainConfig {
    /// Defaults: the reference's hyper-parameters on the CPU.
    pub fn new(stage: Stage, base: PathBuf, data: Vec<PathBuf>, out: PathBuf) -> Self {
        Self {
            stage,
            base,
            unet_config: None,
            init: UnetInit::Base,
            data,
            out,
            resolution: None,
            adamw: AdamWParams::default(),
            batch_size: 4,
            steps: None,
            epochs: Some(60),
            clip_grad_norm: Some(1.0),
            clip_scope: ClipScope::ControlNet,
            conditioning_scale: 1.0,
            controlnet_embedding: None,
            seed: 0,
            checkpoint_every: 10_000,
            keep_checkpoints: 0,
            resume: false,
            stop_after: None,
            validation: None,
            validate_every: 0,
            appearance: None,
            device: Device::Cpu,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The step the run started from (0, or the resumed checkpoint's).
    pub start_step: usize,
    /// Steps done when it stopped.
    pub end_step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// Every logged step (including those before a resume).
    pub losses: Vec<LossRow>,
    /// Steps per second in this invocation.
    pub steps_per_second: f64,
    /// Trained parameters (UNet + ControlNet).
    pub parameters: usize,
    /// The final model folder, when the run completed.
    pub model: Option<PathBuf>,
}

/// The frozen encoders and the schedule.
struct Frozen {
    vae: AutoencoderKl,
    clip: ClipVisionEncoder,
    alphas_cumprod: Vec<f32>,
}

/// The fixed part of one face sample's UNet conditioning.
#[derive(Clone)]
struct MaskedMoments {
    mask: Tensor,
    mean: Tensor,
    logvar: Tensor,
}

/// The UNet folder of a face base: `head/unet`, else a top-level `unet/` (an SD-inpainting base).
fn face_unet_dir(layout: &ModelLayout) -> Result<PathBuf> {
    let head = layout.component("unet")?.to_path_buf();
    let top = layout.root.join("unet");
    Ok(if head.is_dir() || !top.is_dir() {
        head
    } else {
        top
    })
}

/// A ControlNet made from the UNet (`from_unet` stage 1), with `in_channels` input
/// channels: the UNet's `conv_in` is narrowed to its first `in_channels` inputs (the face stage's
/// `x_t` part of `[x_t, mask, masked_latents]`).
fn controlnet_from_unet(
    cfg: &TrainConfig,
    unet_json: &serde_json::Value,
    unet_params: &ParamSet,
    base_cn: &Path,
    in_channels: usize,
) -> Result<(ControlNetModel, ParamSet)> {
    // The embedding widths of the base's ControlNet config when it has one, else diffusers'
    // default.
    let from_base = params::read_config_json(&base_cn.join("config.json"))
        .ok()
        .and_then(|v| {
            serde_json::from_value::<Vec<usize>>(
                v.get("conditioning_embedding_out_channels")?.clone(),
            )
            .ok()
        });
    let widths = cfg
        .controlnet_embedding
        .clone()
        .or(from_base)
        .unwrap_or_else(|| vec![16, 32, 96, 256]);
    let mut cn_json = params::controlnet_config_from_unet(unet_json, &widths);
    cn_json["in_channels"] = in_channels.into();
    let (net, p) = params::build_controlnet(cn_json, &cfg.device)?;
    p.random_init(cfg.seed ^ 0xC0, |_| true)?;
    p.copy_shared(unet_params, &params::FROM_UNET_PREFIXES[1..])?;
    let theirs: HashMap<String, candle_core::Var> = unet_params.vars().into_iter().collect();
    for (name, var) in p.vars() {
        if !name.starts_with(params::FROM_UNET_PREFIXES[0]) {
            continue;
        }
        let src = theirs.get(&name).ok_or_else(|| {
            TrainError::Data(format!(
                "the UNet has no parameter '{name}' for the ControlNet"
            ))
        })?;
        let t = src.as_tensor().detach();
        let t = if t.rank() == 4 {
            t.narrow(1, 0, in_channels)?
        } else {
            t
        };
        var.set(&t.contiguous()?.copy()?)?;
    }
    Ok((net, p))
}

/// A run in progress.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    layout: ModelLayout,
    data: Dataset,
    order: DataOrder,
    frozen: Frozen,
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    unet_params: ParamSet,
    cn_params: ParamSet,
    opt: AdamW,
    moments: Vec<Option<(Tensor, Tensor)>>,
    /// Face stage: per sample, the latent-size mask and the masked image's posterior moments.
    masked: Vec<Option<MaskedMoments>>,
    tokens: HashMap<PathBuf, Tensor>,
    appearance: PathBuf,
}

fn check_divisible(cfg_json: &serde_json::Value, side: usize, vae_factor: usize) -> Result<()> {
    let downs = cfg_json
        .get("down_block_types")
        .and_then(|v| v.as_array())
        .map(|a| a.len().saturating_sub(1))
        .unwrap_or(3);
    let need = vae_factor << downs;
    if side == 0 || !side.is_multiple_of(need) {
        return Err(TrainError::Data(format!(
            "the images are {side} pixels on a side; this VAE (factor {vae_factor}) and UNet \
             ({downs} downsamplers) need a multiple of {need}; give --resolution"
        )));
    }
    Ok(())
}

impl<'a> Trainer<'a> {
    fn new(cfg: &'a TrainConfig, data: Dataset) -> Result<Self> {
        let device = &cfg.device;
        let face = cfg.stage == Stage::Face;
        let layout = ModelLayout::resolve_part(&cfg.base, cfg.stage.part())?;
        let vae = AutoencoderKl::load(layout.component("vae")?, DType::F32, device)?.0;
        let clip =
            ClipVisionEncoder::load(layout.component("image_encoder")?, DType::F32, device)?.0;
        let sched_path = layout.component("scheduler")?.join("scheduler_config.json");
        let sched_cfg = DdimConfig::from_file(&sched_path)?;
        if sched_cfg.prediction_type != PredictionType::Epsilon {
            return Err(TrainError::Data(format!(
                "{}: prediction_type is {:?}; training supports epsilon",
                sched_path.display(),
                sched_cfg.prediction_type
            )));
        }
        let alphas_cumprod = DdimScheduler::new(sched_cfg, 1)?.alphas_cumprod().to_vec();

        let unet_dir = if face {
            face_unet_dir(&layout)?
        } else {
            layout.component("unet")?.to_path_buf()
        };
        let unet_cfg_path = cfg
            .unet_config
            .clone()
            .unwrap_or_else(|| unet_dir.join("config.json"));
        let unet_json = params::read_config_json(&unet_cfg_path)?;
        let latent = vae.config().latent_channels;
        let unet_in = unet_json
            .get("in_channels")
            .and_then(|v| v.as_u64())
            .unwrap_or(4) as usize;
        let want_in = cfg.stage.part().unet_in_channels(latent);
        if unet_in != want_in {
            return Err(EngineError::config(
                &unet_cfg_path,
                format!(
                    "the UNet takes in_channels = {unet_in}; stage {:?} needs {want_in} \
                     (the face UNet takes [latent, mask, masked latent])",
                    cfg.stage
                ),
            )
            .into());
        }
        if face && data.width != data.height {
            return Err(TrainError::Data(format!(
                "face crops are square; these are {}×{}: give --resolution",
                data.width, data.height
            )));
        }
        check_divisible(&unet_json, data.width, vae.config().downsample_factor())?;
        check_divisible(&unet_json, data.height, vae.config().downsample_factor())?;
        let (unet, unet_params) = params::build_unet(unet_json.clone(), device)?;
        let base_cn = layout.component("controlnet")?.to_path_buf();
        let (controlnet, cn_params) = match cfg.stage {
            Stage::Finetune => {
                if cfg.init == UnetInit::Random {
                    return Err(TrainError::Data(
                        "--init random is for pretrain; finetune starts from a pre-trained folder"
                            .into(),
                    ));
                }
                unet_params.load_strict(&unet_dir)?;
                let cn_json = params::read_config_json(&base_cn.join("config.json"))?;
                let (net, p) = params::build_controlnet(cn_json, device)?;
                p.load_strict(&base_cn)?;
                (net, p)
            }
            Stage::Pretrain | Stage::Face => {
                match cfg.init {
                    UnetInit::Base => unet_params.load_strict(&unet_dir)?,
                    UnetInit::Random => unet_params.random_init(cfg.seed, |_| true)?,
                }
                if face && cfg.init == UnetInit::Base && base_cn.join("config.json").is_file() {
                    let cn_json = params::read_config_json(&base_cn.join("config.json"))?;
                    let (net, p) = params::build_controlnet(cn_json, device)?;
                    p.load_strict(&base_cn)?;
                    (net, p)
                } else {
                    controlnet_from_unet(cfg, &unet_json, &unet_params, &base_cn, latent)?
                }
            }
        };
        let mut vars: Vec<_> = unet_params
            .vars()
            .into_iter()
            .map(|(k, v)| (format!("unet.{k}"), v))
            .collect();
        vars.extend(
            cn_params
                .vars()
                .into_iter()
                .map(|(k, v)| (format!("controlnet.{k}"), v)),
        );
        let opt = AdamW::new(vars, cfg.adamw)?;
        let order = DataOrder {
            seed: cfg.seed,
            len: data.len(),
            batch: cfg.batch_size,
        };
        let appearance = cfg
            .appearance
            .clone()
            .unwrap_or_else(|| data.samples[0].reference.clone());
        let n = data.len();
        Ok(Self {
            cfg,
            layout,
            data,
            order,
            frozen: Frozen {
                vae,
                clip,
                alphas_cumprod,
            },
            unet,
            controlnet,
            unet_params,
            cn_params,
            opt,
            moments: vec![None; n],
            masked: vec![None; n],
            tokens: HashMap::new(),
            appearance,
        })
    }

    fn total_steps(&self) -> Result<usize> {
        let total = match (self.cfg.steps, self.cfg.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e * self.order.steps_per_epoch(),
            (None, None) => {
                return Err(TrainError::Data("give --steps or --epochs".into()));
            }
        };
        if total == 0 {
            return Err(TrainError::Data("the run has 0 steps".into()));
        }
        Ok(total)
    }

    /// The VAE posterior moments of sample `i`'s target, `(1, C, h, w)` each.
    fn moments(&mut self, i: usize) -> Result<(Tensor, Tensor)> {
        if let Some(m) = &self.moments[i] {
            return Ok(m.clone());
        }
        let rgb = self.data.load_rgb(&self.data.samples[i].target)?;
        let (w, h) = (self.data.width, self.data.height);
        let x = rgb8_to_tensor(&rgb, w, h, DType::F32, &self.cfg.device)?;
        let x = x.affine(2.0, -1.0)?.unsqueeze(0)?;
        let post = self.frozen.vae.encode(&x)?;
        let m = (post.mean.detach(), post.logvar.detach());
        self.moments[i] = Some(m.clone());
        Ok(m)
    }

    /// The CLIP tokens `(1, N, D)` of sample `i`'s reference.
    fn tokens(&mut self, i: usize) -> Result<Tensor> {
        let path = self.data.samples[i].reference.clone();
        if let Some(t) = self.tokens.get(&path) {
            return Ok(t.clone());
        }
        let (mut rgb, mut w, mut h) = read_rgb8(&path)?;
        if self.cfg.stage == Stage::Face {
            // As at inference (`encode_head_appearance`): cv2.resize to 256² first.
            let s = HEAD_REFERENCE_SIZE;
            (rgb, w, h) = (resize_linear_u8(&rgb, w, h, 3, s, s), s, s);
        }
        let t = self.frozen.clip.encode_image(&rgb, w, h)?.detach();
        self.tokens.insert(path, t.clone());
        Ok(t)
    }

    /// Face stage: sample `i`'s latent-size mask (1 = keep) and the posterior moments of its
    /// masked target (the inference code's own functions).
    fn masked_moments(&mut self, i: usize) -> Result<MaskedMoments> {
        if let Some(m) = &self.masked[i] {
            return Ok(m.clone());
        }
        let sample = &self.data.samples[i];
        let mask_path = sample.mask.clone().ok_or_else(|| TrainError::NoMask {
            file: sample.file.clone(),
            line: sample.line,
        })?;
        let rgb = self.data.load_rgb(&sample.target)?;
        let mask = self.data.load_mask(&mask_path)?;
        let size = self.data.width;
        let (mask_t, masked) = prepare_mask_and_masked_image(&rgb, &mask, size, &self.cfg.device)?;
        let post = self.frozen.vae.encode(&masked)?;
        let (_, _, lh, lw) = post.mean.dims4()?;
        let m = MaskedMoments {
            mask: downsample_mask(&mask_t, lh, lw)?.detach(),
            mean: post.mean.detach(),
            logvar: post.logvar.detach(),
        };
        self.masked[i] = Some(m.clone());
        Ok(m)
    }

    fn last_checkpoint(&self) -> Option<PathBuf> {
        checkpoint::list(&self.cfg.out)
            .ok()
            .and_then(|v| v.last().map(|(_, p)| p.clone()))
    }

    /// One update (0-based step `s`): returns the loss and the gradient norm before clipping.
    fn step(&mut self, s: usize) -> Result<(f32, f32)> {
        let (idx, _) = self.order.batch(s);
        let b = idx.len();
        let t_max = self.frozen.alphas_cumprod.len() as u64;
        let mut rng = stream(self.cfg.seed, tags::STEP, s as u64);
        let ts: Vec<usize> = (0..b).map(|_| (rng.next_u64() % t_max) as usize).collect();
        let (mut means, mut logvars, mut toks, mut controls) = (vec![], vec![], vec![], vec![]);
        let (w, h) = (self.data.width, self.data.height);
        for &i in &idx {
            let (m, lv) = self.moments(i)?;
            means.push(m);
            logvars.push(lv);
            toks.push(self.tokens(i)?);
            let rgb = self.data.load_rgb(&self.data.samples[i].source)?;
            controls.push(rgb8_to_tensor(&rgb, w, h, DType::F32, &self.cfg.device)?);
        }
        let post = DiagonalGaussian {
            mean: Tensor::cat(&means, 0)?,
            logvar: Tensor::cat(&logvars, 0)?,
        };
        let shape = post.mean.shape().clone();
        let device = &self.cfg.device;
        let draw = |rng: &mut crate::temporal::noise::SplitMix64| -> Result<Tensor> {
            Ok(
                Tensor::from_vec(normals(rng, shape.elem_count()), &shape, &Device::Cpu)?
                    .to_device(device)?,
            )
        };
        let post_noise = draw(&mut rng)?;
        let eps = draw(&mut rng)?;
        // Face stage: `[mask, masked_latents]`, with a third draw for the masked image's
        // posterior sample (after the body's two, so the body stream is unchanged).
        let inpaint = if self.cfg.stage == Stage::Face {
            let (mut masks, mut mm, mut ml) = (vec![], vec![], vec![]);
            for &i in &idx {
                let m = self.masked_moments(i)?;
                masks.push(m.mask);
                mm.push(m.mean);
                ml.push(m.logvar);
            }
            let masked_post = DiagonalGaussian {
                mean: Tensor::cat(&mm, 0)?,
                logvar: Tensor::cat(&ml, 0)?,
            };
            let z = masked_post.sample(&draw(&mut rng)?)?;
            Some((Tensor::cat(&masks, 0)?, self.frozen.vae.scale_latents(&z)?))
        } else {
            None
        };
        let x0 = self.frozen.vae.scale_latents(&post.sample(&post_noise)?)?;
        let coef = |f: &dyn Fn(f32) -> f32| -> Result<Tensor> {
            let v: Vec<f32> = ts
                .iter()
                .map(|&t| f(self.frozen.alphas_cumprod[t]))
                .collect();
            Ok(Tensor::from_vec(v, (b, 1, 1, 1), &Device::Cpu)?.to_device(device)?)
        };
        let sqrt_ab = coef(&|a| a.sqrt())?;
        let sqrt_1mab = coef(&|a| (1.0 - a).sqrt())?;
        let xt = (x0.broadcast_mul(&sqrt_ab)? + eps.broadcast_mul(&sqrt_1mab)?)?;
        let ctx = Tensor::cat(&toks, 0)?;
        let control = Tensor::stack(&controls, 0)?;
        let tf: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        let res = self.controlnet.forward_timesteps(
            &xt,
            &tf,
            &ctx,
            &control,
            self.cfg.conditioning_scale,
            Temporal::PerFrame,
        )?;
        let unet_in = match &inpaint {
            Some((mask, masked)) => Tensor::cat(&[&xt, mask, masked], 1)?,
            None => xt.clone(),
        };
        let pred =
            self.unet
                .forward_timesteps(&unet_in, &tf, &ctx, Some(&res), Temporal::PerFrame)?;
        let loss = (pred.to_dtype(DType::F32)? - eps)?.sqr()?.mean_all()?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: s + 1,
                what: "loss".into(),
                value,
                last_checkpoint: self.last_checkpoint(),
            });
        }
        let grads = loss.backward()?;
        let clipped: Vec<(String, candle_core::Var)> = match self.cfg.clip_scope {
            ClipScope::ControlNet => self
                .cn_params
                .vars()
                .into_iter()
                .map(|(k, v)| (format!("controlnet.{k}"), v))
                .collect(),
            ClipScope::All => {
                let mut v: Vec<_> = self
                    .unet_params
                    .vars()
                    .into_iter()
                    .map(|(k, v)| (format!("unet.{k}"), v))
                    .collect();
                v.extend(
                    self.cn_params
                        .vars()
                        .into_iter()
                        .map(|(k, v)| (format!("controlnet.{k}"), v)),
                );
                v
            }
        };
        let norm = grad_norm(&grads, clipped.iter().map(|(_, v)| v))?;
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: s + 1,
                what: "gradient norm".into(),
                value: norm as f32,
                last_checkpoint: self.last_checkpoint(),
            });
        }
        let mut scale = HashMap::new();
        if let Some(max) = self.cfg.clip_grad_norm {
            let c = clip_factor(norm, max);
            for (k, _) in &clipped {
                scale.insert(k.clone(), c);
            }
        }
        self.opt.step(&grads, &scale)?;
        Ok((value, norm as f32))
    }

    /// Fills `dir` with a complete model folder (and, for checkpoints, the optimizer state).
    fn write_model(&self, dir: &Path, state: &TrainerState, optimizer: bool) -> Result<()> {
        let nets = self.nets_dir(dir);
        self.unet_params.save(&nets.join("unet"))?;
        self.cn_params.save(&nets.join("controlnet"))?;
        for c in ["vae", "scheduler", "text_encoder", "image_encoder"] {
            checkpoint::link_or_copy(self.layout.component(c)?, &dir.join(c))?;
        }
        // The face model's reference is the head photo `anchor render --face-model` looks for.
        let name = match self.cfg.stage {
            Stage::Face => "head.png",
            _ => "appearance.png",
        };
        write_appearance(&self.appearance, &dir.join(name))?;
        if let Some(a) = &self.layout.anchor_json {
            // The base's sampling and face-pass defaults (not its component map: the trained
            // model folder is complete).
            let v = params::read_config_json(a)?;
            let kept: serde_json::Map<String, serde_json::Value> = ["defaults", "face_defaults"]
                .iter()
                .filter_map(|k| v.get(*k).map(|d| (k.to_string(), d.clone())))
                .collect();
            if !kept.is_empty() {
                let p = dir.join("anchor.json");
                let text = serde_json::Value::Object(kept).to_string();
                std::fs::write(&p, text + "\n").map_err(io_err(&p))?;
            }
        }
        state.write(dir)?;
        if optimizer {
            checkpoint::save_optimizer(dir, &self.opt)?;
        }
        Ok(())
    }

    /// Where the trained networks go in a model folder: `head/` for the face stage (the
    /// released checkpoints' layout), else the top level.
    fn nets_dir(&self, dir: &Path) -> PathBuf {
        match self.cfg.stage {
            Stage::Face => dir.join(ModelPart::Head.subfolder()),
            _ => dir.to_path_buf(),
        }
    }

    fn state(&self, step: usize, total: usize, losses: &[LossRow]) -> TrainerState {
        TrainerState {
            kind: match self.cfg.stage {
                Stage::Face => "train-face",
                _ => "train",
            }
            .into(),
            step,
            seed: self.cfg.seed,
            batch_size: self.cfg.batch_size,
            dataset_len: self.data.len(),
            total_steps: total,
            losses: losses.to_vec(),
        }
    }

    /// Restores weights, moments and history from checkpoint `dir`.
    fn restore(&mut self, dir: &Path, total: usize) -> Result<Vec<LossRow>> {
        let state = TrainerState::read(dir)?;
        state.check_resumable(&self.state(0, total, &[]), dir)?;
        let nets = self.nets_dir(dir);
        self.unet_params.load_strict(&nets.join("unet"))?;
        self.cn_params.load_strict(&nets.join("controlnet"))?;
        let moments =
            checkpoint::load_tensors(&dir.join(checkpoint::OPTIMIZER_FILE), &self.cfg.device)?;
        self.opt.restore(&moments, state.step as u64)?;
        Ok(state.losses)
    }
}

/// Copies the appearance image as PNG (re-encoded when it is not one).
fn write_appearance(src: &Path, dst: &Path) -> Result<()> {
    let is_png = src
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        return checkpoint::link_or_copy(src, dst);
    }
    let (rgb, w, h) = read_rgb8(src)?;
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| TrainError::Data(format!("{}: bad image buffer", src.display())))?;
    img.save(dst)
        .map_err(|e| TrainError::Data(format!("cannot write {}: {e}", dst.display())))
}

/// Runs (or resumes) a training run; `progress` receives one line per logged step and event.
pub fn train(cfg: &TrainConfig, progress: &dyn Fn(&str)) -> Result<TrainReport> {
    if cfg.batch_size == 0 || cfg.checkpoint_every == 0 {
        return Err(TrainError::Data(
            "--batch-size and --checkpoint-every must be at least 1".into(),
        ));
    }
    let data = if cfg.stage == Stage::Face {
        if cfg.validate_every > 0 {
            return Err(TrainError::Data(
                "validation renders are for the body stages; the face stage has none".into(),
            ));
        }
        Dataset::open_head(&cfg.data, cfg.resolution)?
    } else {
        Dataset::open(&cfg.data, cfg.resolution)?
    };
    std::fs::create_dir_all(&cfg.out).map_err(io_err(&cfg.out))?;
    let ck_dir = cfg.out.join(checkpoint::CHECKPOINTS);
    for p in checkpoint::remove_partials(&cfg.out)?
        .into_iter()
        .chain(checkpoint::remove_partials(&ck_dir)?)
    {
        progress(&format!(
            "removed {} (left by an interrupted run)",
            p.display()
        ));
    }
    let existing = checkpoint::list(&cfg.out)?;
    if !existing.is_empty() && !cfg.resume {
        return Err(TrainError::Data(format!(
            "{} already holds checkpoints; pass --resume to continue that run, or choose an \
             empty output folder",
            cfg.out.display()
        )));
    }
    let mut t = Trainer::new(cfg, data)?;
    let total = t.total_steps()?;
    let parameters = t.unet_params.parameter_count() + t.cn_params.parameter_count();
    progress(&format!(
        "{} samples at {}×{}, batch {}, {} steps ({} per epoch), {} trained parameters",
        t.data.len(),
        t.data.width,
        t.data.height,
        cfg.batch_size,
        total,
        t.order.steps_per_epoch(),
        parameters
    ));
    let csv = cfg.out.join("loss.csv");
    let plot = cfg.out.join("loss.png");
    let mut losses = match existing.last() {
        Some((step, dir)) if cfg.resume => {
            progress(&format!("resuming from {} (step {step})", dir.display()));
            t.restore(dir, total)?
        }
        _ => Vec::new(),
    };
    let start = losses.last().map(|r| r.step).unwrap_or(0);
    super::loss_log::write_csv(&csv, &losses)?;
    let clock = Instant::now();
    let mut end = start;
    for s in start..total {
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
        progress(&format!(
            "step {end}/{total}  loss {loss:.5}  grad norm {grad_norm:.4}"
        ));
        let state = t.state(end, total, &losses);
        if end.is_multiple_of(cfg.checkpoint_every) || end == total {
            let dest = ck_dir.join(checkpoint::step_name(end));
            checkpoint::write_dir_atomically(&dest, |tmp| t.write_model(tmp, &state, true))?;
            super::loss_log::write_plot(&plot, &losses)?;
            progress(&format!("checkpoint {}", dest.display()));
            if cfg.keep_checkpoints > 0 {
                let all = checkpoint::list(&cfg.out)?;
                for (_, old) in all
                    .iter()
                    .take(all.len().saturating_sub(cfg.keep_checkpoints))
                {
                    std::fs::remove_dir_all(old).map_err(io_err(old))?;
                }
            }
        }
        if let Some(spec) = cfg
            .validation
            .as_ref()
            .filter(|_| cfg.validate_every > 0 && end.is_multiple_of(cfg.validate_every))
        {
            let ck = ck_dir.join(checkpoint::step_name(end));
            let out = cfg.out.join("validation").join(checkpoint::step_name(end));
            let n = if ck.is_dir() {
                validate::render(&ck, spec, &out, &cfg.device, t.data.width)?
            } else {
                let tmp = cfg.out.join("validation").join(".model.partial");
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
                }
                std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
                let r = t
                    .write_model(&tmp, &state, false)
                    .and_then(|_| validate::render(&tmp, spec, &out, &cfg.device, t.data.width));
                let _ = std::fs::remove_dir_all(&tmp);
                r?
            };
            progress(&format!("validation: {n} frames in {}", out.display()));
        }
    }
    let done = end - start;
    let secs = clock.elapsed().as_secs_f64();
    let mut model = None;
    if end == total {
        let dest = cfg.out.join("model");
        let state = t.state(end, total, &losses);
        checkpoint::write_dir_atomically(&dest, |tmp| t.write_model(tmp, &state, false))?;
        super::loss_log::write_plot(&plot, &losses)?;
        progress(&format!("model {}", dest.display()));
        model = Some(dest);
    }
    Ok(TrainReport {
        start_step: start,
        end_step: end,
        total_steps: total,
        losses,
        steps_per_second: if secs > 0.0 { done as f64 / secs } else { 0.0 },
        parameters,
        model,
    })
}
