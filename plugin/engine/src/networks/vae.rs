//! The Stable-Diffusion VAE: diffusers `AutoencoderKL` (Kingma & Welling 2013, arXiv 1312.6114;
//! the SD "kl-f8" autoencoder of Rombach et al. 2022, arXiv 2112.10752), built from its `config.json`.
//!
//! Encode returns the diagonal-Gaussian posterior (mean and log-variance); a posterior sample takes
//! the caller's noise, so every random draw is seeded by the caller (the head pass
//! needs a *sample* of the masked image's posterior). Decode maps latents back to images in [-1, 1].
//! The latent scale (`scaling_factor`, 0.18215 for SD1.5) is applied by
//! [`AutoencoderKl::encode_scaled`] / [`AutoencoderKl::decode_scaled`].
//!
//! The mid-block attention accepts both key layouts: the current `to_q/to_k/to_v/to_out.0`
//! and the legacy `query/key/value/proj_attn`.
use std::path::Path;

use super::conv::{Conv2d, Conv2dConfig};
use super::group_norm::GroupNorm;
use super::linear::{self, Linear};
use candle_core::{Module, Result as CResult, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::profile::{self, Op};
use crate::weights;

/// diffusers `AutoencoderKL` `config.json`. Defaults are SD1.5's (`vae/config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// One entry per encoder block (all `DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// One entry per decoder block (all `UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Channels per block.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder block (the decoder has one more).
    pub layers_per_block: usize,
    /// Activation; only `silu` exists in SD VAEs.
    pub act_fn: String,
    /// Latent channels.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Latent scale: `z = scaling_factor · E(x)` (0.18215 for SD1.5).
    pub scaling_factor: f64,
    /// Latent shift (SD3/Flux VAEs); `z = (E(x) − shift) · scale`.
    pub shift_factor: Option<f64>,
    /// Whether `quant_conv` exists.
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have their attention.
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKlConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg: Self = weights::read_component_config(dir, &["AutoencoderKL"])?;
        cfg.validate()
            .map_err(|m| EngineError::config(dir.join("config.json"), m))?;
        Ok(cfg)
    }

    /// Checks the values once, so that building and running cannot fail on them.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels has {n} entries, down_block_types {}, up_block_types {} \
                 (expected the same count)",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| t.as_str() != "DownEncoderBlock2D")
        {
            return Err(format!(
                "down block type {t} is not supported (expected DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| t.as_str() != "UpDecoderBlock2D")
        {
            return Err(format!(
                "up block type {t} is not supported (expected UpDecoderBlock2D)"
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "act_fn = {} is not supported (expected silu)",
                self.act_fn
            ));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups = 0".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(format!(
                "block_out_channels entry {c} is not a multiple of norm_num_groups = {}",
                self.norm_num_groups
            ));
        }
        if self.layers_per_block == 0 || self.latent_channels == 0 || self.in_channels == 0 {
            return Err(
                "layers_per_block, latent_channels and in_channels must be positive".into(),
            );
        }
        Ok(())
    }

    /// Spatial downsampling factor between image and latents (8 for SD1.5).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

fn conv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> CResult<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    super::conv::conv2d(cin, cout, k, cfg, vb)
}

/// diffusers `ResnetBlock2D` without time embedding (eps 1e-6 in the VAE).
#[derive(Debug, Clone)]
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> CResult<Self> {
        let eps = 1e-6;
        let norm1 = GroupNorm::new(groups, cin, eps, vb.pp("norm1"))?;
        let conv1 = conv(vb.pp("conv1"), cin, cout, 3, 1, 1)?;
        let norm2 = GroupNorm::new(groups, cout, eps, vb.pp("norm2"))?;
        let conv2 = conv(vb.pp("conv2"), cout, cout, 3, 1, 1)?;
        let conv_shortcut = if cin != cout {
            Some(conv(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            conv_shortcut,
        })
    }
}

impl Module for ResnetBlock2D {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        // Per-image GroupNorm with the SiLU fused in (`silu(norm(x))`).
        let h = self.norm1.forward_frames_silu(x, 1)?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward_frames_silu(&h, 1)?;
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let _p = profile::scope(Op::Elementwise);
        super::elementwise::add(&shortcut, &h)
    }
}

/// The single-head spatial self-attention of the VAE mid block (diffusers `Attention` with
/// `group_norm`, residual connection, one head of width C).
#[derive(Debug, Clone)]
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    scale: f64,
}

impl MidAttention {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> CResult<Self> {
        let group_norm = GroupNorm::new(groups, c, 1e-6, vb.pp("group_norm"))?;
        // Legacy checkpoints (pre-diffusers-0.14 conversions) name the projections differently.
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let (q, k, v, o) = if legacy {
            ("query", "key", "value", "proj_attn")
        } else {
            ("to_q", "to_k", "to_v", "to_out.0")
        };
        Ok(Self {
            group_norm,
            to_q: linear::linear(c, c, vb.pp(q))?,
            to_k: linear::linear(c, c, vb.pp(k))?,
            to_v: linear::linear(c, c, vb.pp(v))?,
            to_out: linear::linear(c, c, vb.pp(o))?,
            scale: (c as f64).powf(-0.5),
        })
    }
}

impl Module for MidAttention {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let _p = profile::scope(Op::Attention);
        let (b, c, h, w) = x.dims4()?;
        let hs = self.group_norm.forward_frames(x, 1)?;
        let hs = hs.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        if let Some(out) = self.forward_fused(&hs)? {
            let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
            return out + x;
        }
        let q = self.to_q.forward(&hs)?;
        let k = self.to_k.forward(&hs)?;
        let v = self.to_v.forward(&hs)?;
        // diffusers upcasts the softmax for this block (`upcast_softmax=True`).
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let dtype = scores.dtype();
        let probs =
            super::differentiable::softmax_last_dim(&scores.to_dtype(candle_core::DType::F32)?)?
                .to_dtype(dtype)?;
        let out = probs.matmul(&v)?;
        let out = self.to_out.forward(&out)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}

impl MidAttention {
    /// f32 CPU inference: the projections through the threaded linear kernel and the attention
    /// through the fused tiled kernel (no 4096 × 4096 score matrix), on tokens `[B, HW, C]`;
    /// `None` where the kernels do not apply (other devices or dtypes, gradients, a bf16 scope).
    fn forward_fused(&self, hs: &Tensor) -> CResult<Option<Tensor>> {
        use super::elementwise::linear as fast;
        if super::gemm_bf16::active().is_some() || !super::attention_cpu::applies(hs) {
            return Ok(None);
        }
        let project = |l: &Linear| fast(hs, l.weight(), l.bias());
        let (Some(q), Some(k), Some(v)) = (
            project(&self.to_q)?,
            project(&self.to_k)?,
            project(&self.to_v)?,
        ) else {
            return Ok(None);
        };
        let out = super::attention_cpu::fused_attention(&q, &k, &v, self.scale)?;
        fast(&out, self.to_out.weight(), self.to_out.bias())
    }
}

/// diffusers `UNetMidBlock2D` (resnet, attention, resnet) without time embedding.
#[derive(Debug, Clone)]
struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<MidAttention>,
}

impl MidBlock {
    fn new(vb: VarBuilder, c: usize, groups: usize, attention: bool) -> CResult<Self> {
        let r = vb.pp("resnets");
        let resnets = vec![
            ResnetBlock2D::new(r.pp(0), c, c, groups)?,
            ResnetBlock2D::new(r.pp(1), c, c, groups)?,
        ];
        let attention = if attention {
            Some(MidAttention::new(vb.pp("attentions").pp(0), c, groups)?)
        } else {
            None
        };
        Ok(Self { resnets, attention })
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = self.resnets[0].forward(x)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h)
    }
}

/// diffusers `DownEncoderBlock2D`: resnets, then an optional stride-2 conv with (0,1,0,1) padding.
#[derive(Debug, Clone)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Conv2d>,
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        if let Some(d) = &self.downsampler {
            // `Downsample2D(padding=0)` pads right and bottom by one before the stride-2 conv.
            h = h
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            h = d.forward(&h)?;
        }
        Ok(h)
    }
}

/// diffusers `UpDecoderBlock2D`: resnets, then optional nearest ×2 and a 3×3 conv.
#[derive(Debug, Clone)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Conv2d>,
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        if let Some(u) = &self.upsampler {
            let (_, _, hh, ww) = h.dims4()?;
            h = profile::time(
                Op::Resample,
                || match super::elementwise::upsample_nearest_2x(&h)? {
                    Some(up) => Ok(up),
                    None => h.upsample_nearest2d(hh * 2, ww * 2),
                },
            )?;
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}

/// diffusers `Encoder` (double_z: outputs mean and log-variance channels).
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> CResult<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let conv_in = conv(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let bvb = vb.pp("down_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.layers_per_block);
            for j in 0..cfg.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                resnets.push(ResnetBlock2D::new(bvb.pp("resnets").pp(j), rin, cout, g)?);
            }
            let downsampler = if i + 1 < ch.len() {
                Some(conv(
                    bvb.pp("downsamplers").pp(0).pp("conv"),
                    cout,
                    cout,
                    3,
                    2,
                    0,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock2D {
                resnets,
                downsampler,
            });
            cin = cout;
        }
        let last = ch[ch.len() - 1];
        let mid_block = MidBlock::new(vb.pp("mid_block"), last, g, cfg.mid_block_add_attention)?;
        let conv_norm_out = GroupNorm::new(g, last, 1e-6, vb.pp("conv_norm_out"))?;
        let conv_out = conv(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        let h = self.conv_norm_out.forward_frames_silu(&h, 1)?;
        self.conv_out.forward(&h)
    }
}

/// diffusers `Decoder`.
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &AutoencoderKlConfig) -> CResult<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let conv_in = conv(vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?;
        let mid_block = MidBlock::new(vb.pp("mid_block"), rev[0], g, cfg.mid_block_add_attention)?;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let bvb = vb.pp("up_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.layers_per_block + 1);
            for j in 0..=cfg.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                resnets.push(ResnetBlock2D::new(bvb.pp("resnets").pp(j), rin, cout, g)?);
            }
            let upsampler = if i + 1 < rev.len() {
                Some(conv(
                    bvb.pp("upsamplers").pp(0).pp("conv"),
                    cout,
                    cout,
                    3,
                    1,
                    1,
                )?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock2D { resnets, upsampler });
            cin = cout;
        }
        let last = rev[rev.len() - 1];
        let conv_norm_out = GroupNorm::new(g, last, 1e-6, vb.pp("conv_norm_out"))?;
        let conv_out = conv(vb.pp("conv_out"), last, cfg.out_channels, 3, 1, 1)?;
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> CResult<Tensor> {
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        let h = self.conv_norm_out.forward_frames_silu(&h, 1)?;
        self.conv_out.forward(&h)
    }
}

/// The diagonal Gaussian posterior q(z | x) returned by [`AutoencoderKl::encode`].
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// Posterior mean, `(B, latent_channels, H/f, W/f)` (unscaled).
    pub mean: Tensor,
    /// Posterior log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// A sample `mean + exp(logvar / 2) · noise` with the caller's standard-normal `noise`.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(EngineError::Input(format!(
                "posterior noise has shape {:?}, expected {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let std = (&self.logvar * 0.5)?.exp()?;
        let noise = noise.to_dtype(self.mean.dtype())?;
        Ok((&self.mean + std.mul(&noise)?)?)
    }
}

/// diffusers `AutoencoderKL`.
#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKlConfig,
}

impl AutoencoderKl {
    /// Builds the network; `vb` is rooted at the checkpoint's top level.
    pub fn new(vb: VarBuilder, config: &AutoencoderKlConfig) -> CResult<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let l2 = 2 * config.latent_channels;
        let l = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), config)?;
        let decoder = Decoder::new(vb.pp("decoder"), config)?;
        let quant_conv = if config.use_quant_conv {
            Some(conv(vb.pp("quant_conv"), l2, l2, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv(vb.pp("post_quant_conv"), l, l, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
        })
    }

    /// Loads `dir/config.json` and the weights in `dir` with the strict key check.
    pub fn load(
        dir: &Path,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<(Self, weights::LoadReport)> {
        let cfg = AutoencoderKlConfig::from_dir(dir)?;
        let w = weights::StrictWeights::open_dir(dir)?;
        w.build(dtype, device, &[], |vb| Self::new(vb, &cfg))
    }

    /// The config.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    fn check_image(&self, x: &Tensor) -> Result<()> {
        let (_, c, h, w) = x.dims4()?;
        let f = self.config.downsample_factor();
        if c != self.config.in_channels || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(EngineError::Input(format!(
                "VAE input is {c}×{h}×{w}; expected {} channels and sides divisible by {f}",
                self.config.in_channels
            )));
        }
        Ok(())
    }

    /// Encodes images `(B, C, H, W)` in [-1, 1] to the latent posterior (unscaled).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.check_image(x)?;
        let mut moments = self.encoder.forward(x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let l = self.config.latent_channels;
        let mean = moments.narrow(1, 0, l)?;
        let logvar = moments.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        Ok(DiagonalGaussian { mean, logvar })
    }

    /// Decodes unscaled latents `(B, latent_channels, h, w)` to images in about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            return Err(EngineError::Input(format!(
                "VAE latents have {c} channels, expected {}",
                self.config.latent_channels
            )));
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }

    /// Scales raw latents for the UNet: `(z − shift) · scaling_factor`.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(z.affine(
            self.config.scaling_factor,
            -shift * self.config.scaling_factor,
        )?)
    }

    /// Decodes UNet-space latents: `decode(z / scaling_factor + shift)` (body output).
    pub fn decode_scaled(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        // Divide (not multiply by the reciprocal) as the reference does: `latents / 0.18215`.
        let sf = Tensor::new(self.config.scaling_factor as f32, z.device())?.to_dtype(z.dtype())?;
        let unscaled = z.broadcast_div(&sf)?;
        let unscaled = if shift != 0.0 {
            (unscaled + shift)?
        } else {
            unscaled
        };
        self.decode(&unscaled)
    }

    /// [`Self::decode_scaled`] one batch element at a time (diffusers `enable_vae_slicing`, which
    /// the body pass uses): the peak memory is one frame's.
    pub fn decode_scaled_sliced(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            frames.push(self.decode_scaled(&z.narrow(0, i, 1)?)?);
        }
        Ok(Tensor::cat(&frames, 0)?)
    }
}
