//! diffusers `ControlNetModel`, in 2D and in Make-Your-Anchor's 3D window variant.
//!
//! A copy of the UNet's encoder half (`conv_in`, `time_embedding`, down blocks, mid block) plus the
//! conditioning embedding (`controlnet_cond_embedding`) and one zero-initialised 1×1 conv per skip
//! state (`controlnet_down_blocks.{i}`) and for the mid block (`controlnet_mid_block`). Its config
//! holds the UNet's encoder keys ([`EncoderConfig`], flattened) and is checked by the same rows.
//! Every residual is multiplied by the conditioning scale. In [`Temporal::Window`] mode the ResNet
//! GroupNorms share statistics across the window's frames but self-attention stays per frame
//! (the original's `IndividualAttention`).
use std::path::{Path, PathBuf};

use super::conv::{Conv2d, Conv2dConfig};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::conv;
use super::unet::{
    check_class, check_sample, context_for_batch, positive_count, read_config, unsupported,
    ConfigCheck, EncoderConfig, Topology,
};
use super::unet_blocks::{DownBlock, DownBlockSpec, FrameLayout, MidBlock, ResnetCommon};
use crate::error::{EngineError, Result};
use crate::profile::{self, Op};

pub use super::unet_blocks::Temporal;

/// The residuals a ControlNet hands to the UNet (diffusers' `ControlNetOutput`), already scaled.
#[derive(Debug, Clone)]
pub struct ControlNetOutput {
    /// One per UNet skip state, in down order (12 for SD1.5).
    pub down_block_res_samples: Vec<Tensor>,
    /// Added to the mid block output.
    pub mid_block_res_sample: Tensor,
}

/// The `config.json` of a diffusers `ControlNetModel`. Field names are the JSON keys; absent keys
/// take the Stable Diffusion 1.5 values. Keys this port does not know are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControlNetConfig {
    /// `_class_name`: must be `ControlNetModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// The encoder keys, shared with the UNet the ControlNet copies.
    #[serde(flatten)]
    pub encoder: EncoderConfig,
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Channels of the control image (3).
    pub conditioning_channels: usize,
    /// `rgb` or `bgr` (the control image is flipped for `bgr`).
    pub controlnet_conditioning_channel_order: String,
    /// Channels of the conditioning embedding's stages.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// Must be false.
    pub global_pool_conditions: bool,
    /// Where the config was read from (for error messages); not a JSON key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for ControlNetConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            encoder: EncoderConfig::default(),
            in_channels: 4,
            conditioning_channels: 3,
            controlnet_conditioning_channel_order: "rgb".into(),
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            global_pool_conditions: false,
            source: None,
        }
    }
}

/// The ControlNet's own checks (beyond the shared encoder's), one row per key.
const CONTROLNET_CHECKS: &[ConfigCheck<ControlNetConfig>] = &[
    ("in_channels", |c| positive_count(c.in_channels)),
    ("conditioning_channels", |c| {
        positive_count(c.conditioning_channels)
    }),
    ("conditioning_embedding_out_channels", |c| {
        let emb = &c.conditioning_embedding_out_channels;
        (emb.is_empty() || emb.contains(&0))
            .then(|| format!("is {emb:?}, expected positive channel counts"))
    }),
    ("controlnet_conditioning_channel_order", |c| {
        match c.controlnet_conditioning_channel_order.as_str() {
            "rgb" | "bgr" => None,
            other => Some(format!("is {other:?}, expected \"rgb\" or \"bgr\"")),
        }
    }),
    ("global_pool_conditions", |c| {
        unsupported(c.global_pool_conditions, false)
    }),
];

/// The checked, plain form of a ControlNet config.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetArchitecture {
    pub(crate) in_channels: usize,
    pub(crate) conditioning_channels: usize,
    pub(crate) bgr: bool,
    pub(crate) embedding_channels: Vec<usize>,
    pub(crate) time_proj: Timesteps,
    pub(crate) temb_channels: usize,
    pub(crate) common: ResnetCommon,
    pub(crate) topology: Topology,
    pub(crate) down: Vec<DownBlockSpec>,
    pub(crate) mid_scale_factor: f64,
}

impl ControlNetArchitecture {
    /// Width the encoder hidden states must have.
    pub fn cross_attention_dim(&self) -> usize {
        self.topology.cross_attention_dims[0]
    }
    /// Residuals produced for the down path (12 for SD1.5).
    pub fn num_down_residuals(&self) -> usize {
        1 + self
            .down
            .iter()
            .map(|d| d.num_layers + usize::from(d.add_downsample))
            .sum::<usize>()
    }
    /// Pixel-to-latent downsampling of the conditioning embedding.
    pub fn conditioning_downscale(&self) -> usize {
        1 << (self.embedding_channels.len() - 1)
    }
}

impl ControlNetConfig {
    /// Reads `config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut cfg: Self = read_config(path)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::Config {
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("<ControlNetModel config>")),
            message,
        }
    }

    /// Checks every value once and returns the plain architecture. All problems are reported
    /// together, each quoting the value found and the one expected.
    pub fn validate(&self) -> Result<ControlNetArchitecture> {
        check_class(self.class_name.as_deref(), "ControlNetModel").map_err(|m| self.error(m))?;
        let topology = self
            .encoder
            .check(self, CONTROLNET_CHECKS)
            .map_err(|e| self.error(e.join("; ")))?;
        let mut e = Vec::new();
        topology.check(&mut e);
        let down = topology.down_blocks(&self.encoder.down_block_types, &mut e);
        if !e.is_empty() {
            return Err(self.error(e.join("; ")));
        }
        let common = self.encoder.resnet_common(&topology);
        Ok(ControlNetArchitecture {
            in_channels: self.in_channels,
            conditioning_channels: self.conditioning_channels,
            bgr: self.controlnet_conditioning_channel_order == "bgr",
            embedding_channels: self.conditioning_embedding_out_channels.clone(),
            time_proj: self.encoder.time_proj(),
            temb_channels: common.temb_channels,
            common,
            topology,
            down,
            mid_scale_factor: self.encoder.mid_block_scale_factor,
        })
    }
}

/// `ControlNetConditioningEmbedding`: `conv_in` → SiLU → (`blocks.{2i}` same-size conv → SiLU →
/// `blocks.{2i+1}` stride-2 conv → SiLU)… → `conv_out`. All convs are 3×3 and per frame.
#[derive(Debug, Clone)]
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(
        cin: usize,
        channels: &[usize],
        cout: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let mut blocks = Vec::new();
        let bvb = vb.pp("blocks");
        for (i, pair) in channels.windows(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            blocks.push(conv(a, a, 3, 1, bvb.pp(2 * i))?);
            blocks.push(conv(a, b, 3, 2, bvb.pp(2 * i + 1))?);
        }
        let last = channels.last().copied().unwrap_or(cin);
        Ok(Self {
            conv_in: conv(cin, channels[0], 3, 1, vb.pp("conv_in"))?,
            blocks,
            conv_out: conv(last, cout, 3, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for ConditioningEmbedding {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The embedding runs at the working resolution on every frame: candle's one-thread
        // scalar `silu` cost as much as its convolutions.
        let silu = |t: &Tensor| profile::time(Op::Activation, || super::elementwise::silu(t));
        let mut h = silu(&self.conv_in.forward(x)?)?;
        for block in &self.blocks {
            h = silu(&block.forward(&h)?)?;
        }
        self.conv_out.forward(&h)
    }
}

/// diffusers `ControlNetModel` with the 3D window variant.
#[derive(Debug, Clone)]
pub struct ControlNetModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    controlnet_cond_embedding: ConditioningEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    controlnet_down_blocks: Vec<Conv2d>,
    controlnet_mid_block: Conv2d,
    arch: ControlNetArchitecture,
}

impl ControlNetModel {
    /// Builds the network from `vb` (keys as in the diffusers checkpoint, no prefix).
    pub fn new(vb: VarBuilder, cfg: &ControlNetConfig) -> Result<Self> {
        let arch = cfg.validate()?;
        let channels = &arch.topology.block_out_channels;
        let c0 = channels[0];
        let c_last = channels[channels.len() - 1];
        let common = arch.common;
        let down_blocks = arch
            .down
            .iter()
            .enumerate()
            .map(|(i, spec)| DownBlock::new(spec, &common, vb.pp("down_blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // One zero conv per skip state: conv_in's output, then each layer (+ the downsampler).
        let mut widths = vec![c0];
        for spec in &arch.down {
            widths.extend(std::iter::repeat_n(spec.out_channels, spec.num_layers));
            if spec.add_downsample {
                widths.push(spec.out_channels);
            }
        }
        let zero_conv =
            |c: usize, vb: VarBuilder| super::conv::conv2d(c, c, 1, Conv2dConfig::default(), vb);
        let controlnet_down_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| zero_conv(c, vb.pp("controlnet_down_blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv(arch.in_channels, c0, 3, 1, vb.pp("conv_in"))?,
            time_embedding: TimestepEmbedding::new(
                c0,
                arch.temb_channels,
                vb.pp("time_embedding"),
            )?,
            controlnet_cond_embedding: ConditioningEmbedding::new(
                arch.conditioning_channels,
                &arch.embedding_channels,
                c0,
                vb.pp("controlnet_cond_embedding"),
            )?,
            down_blocks,
            mid_block: MidBlock::new(
                c_last,
                &arch.topology.mid(),
                arch.mid_scale_factor,
                &common,
                vb.pp("mid_block"),
            )?,
            controlnet_down_blocks,
            controlnet_mid_block: zero_conv(c_last, vb.pp("controlnet_mid_block"))?,
            arch,
        })
    }

    /// The checked architecture.
    pub fn architecture(&self) -> &ControlNetArchitecture {
        &self.arch
    }

    /// Residuals for `sample: [B, in_channels, h, w]` and `controlnet_cond: [B, cond_channels,
    /// h·8, w·8]` (RGB in [0, 1]), each multiplied by `conditioning_scale`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        controlnet_cond: &Tensor,
        conditioning_scale: f64,
        mode: Temporal,
    ) -> Result<ControlNetOutput> {
        // The shapes are checked before the full-resolution embedding runs.
        check_sample(sample, self.arch.in_channels, "ControlNet sample")?;
        self.check_condition(sample, controlnet_cond.dims())?;
        let cond = self.embed_condition(controlnet_cond, sample.dtype())?;
        self.forward_condition(
            sample,
            timestep,
            encoder_hidden_states,
            &cond,
            conditioning_scale,
            mode,
        )
    }

    /// The conditioning image must be `[B, cond_channels, h·s, w·s]` for a `[B, _, h, w]` sample
    /// (`s` the embedding's downscale).
    fn check_condition(&self, sample: &Tensor, image_dims: &[usize]) -> Result<()> {
        let (b, _, h, w) = sample.dims4()?;
        let s = self.arch.conditioning_downscale();
        let expected = [b, self.arch.conditioning_channels, h * s, w * s];
        if image_dims != expected {
            return Err(EngineError::Input(format!(
                "ControlNet conditioning image has shape {image_dims:?}, expected {expected:?}"
            )));
        }
        Ok(())
    }

    /// The conditioning image `[B, cond_channels, H, W]` (RGB in [0, 1]) through the channel
    /// order and `controlnet_cond_embedding`, in `dtype`. It depends on the image alone (neither
    /// the timestep, the sample nor the prompt), so the two CFG halves of a window and the steps
    /// of one face crop share it: [`Self::forward_condition`] takes it as made here. Computed at
    /// the same batch size, it gives the same bits as inside [`Self::forward`].
    pub fn embed_condition(
        &self,
        controlnet_cond: &Tensor,
        dtype: DType,
    ) -> Result<ControlCondition> {
        let image_dims = controlnet_cond.dims().to_vec();
        let c = self.arch.conditioning_channels;
        if !matches!(image_dims.as_slice(), &[b, ch, h, w] if b > 0 && ch == c && h > 0 && w > 0) {
            return Err(EngineError::Input(format!(
                "ControlNet conditioning image has shape {image_dims:?}, expected [batch, {c}, \
                 height, width]"
            )));
        }
        let cond = controlnet_cond.to_dtype(dtype)?;
        let cond = if self.arch.bgr {
            let idx = Tensor::arange(0u32, c as u32, cond.device())?.flip(&[0])?;
            cond.index_select(&idx, 1)?
        } else {
            cond
        };
        Ok(ControlCondition {
            embedded: self.controlnet_cond_embedding.forward(&cond)?,
            image_dims,
        })
    }

    /// [`Self::forward`] with the conditioning image already through [`Self::embed_condition`].
    pub fn forward_condition(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        cond: &ControlCondition,
        conditioning_scale: f64,
        mode: Temporal,
    ) -> Result<ControlNetOutput> {
        let b = check_sample(sample, self.arch.in_channels, "ControlNet sample")?;
        let t_proj = self
            .arch
            .time_proj
            .forward(timestep, b, sample.dtype(), sample.device())?;
        self.forward_embedded(
            sample,
            &t_proj,
            encoder_hidden_states,
            cond,
            conditioning_scale,
            mode,
        )
    }

    /// [`Self::forward`] with one timestep per batch entry (training draws one per sample).
    pub fn forward_timesteps(
        &self,
        sample: &Tensor,
        timesteps: &[f64],
        encoder_hidden_states: &Tensor,
        controlnet_cond: &Tensor,
        conditioning_scale: f64,
        mode: Temporal,
    ) -> Result<ControlNetOutput> {
        let b = check_sample(sample, self.arch.in_channels, "ControlNet sample")?;
        if timesteps.len() != b {
            return Err(EngineError::Input(format!(
                "{} timesteps for a batch of {b}",
                timesteps.len()
            )));
        }
        let t_proj =
            self.arch
                .time_proj
                .forward_each(timesteps, sample.dtype(), sample.device())?;
        let cond = self.embed_condition(controlnet_cond, sample.dtype())?;
        self.forward_embedded(
            sample,
            &t_proj,
            encoder_hidden_states,
            &cond,
            conditioning_scale,
            mode,
        )
    }

    /// The network after the timestep sinusoid `t_proj: [B, C0]` and the conditioning embedding.
    fn forward_embedded(
        &self,
        sample: &Tensor,
        t_proj: &Tensor,
        encoder_hidden_states: &Tensor,
        cond: &ControlCondition,
        conditioning_scale: f64,
        mode: Temporal,
    ) -> Result<ControlNetOutput> {
        let b = sample.dim(0)?;
        self.check_condition(sample, &cond.image_dims)?;
        let e = &cond.embedded;
        if e.dtype() != sample.dtype() || !e.device().same_device(sample.device()) {
            return Err(EngineError::Input(format!(
                "the ControlNet conditioning was embedded as {:?} on {:?}, the sample is {:?} on \
                 {:?}: embed it for the sample's dtype and device",
                e.dtype(),
                e.device().location(),
                sample.dtype(),
                sample.device().location()
            )));
        }
        let context = context_for_batch(encoder_hidden_states, b, self.arch.cross_attention_dim())?;
        let layout = FrameLayout::new(mode, b, false)?;
        let temb = self.time_embedding.forward(t_proj)?;
        let mut h = (self.conv_in.forward(sample)? + &cond.embedded)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, &temb, &context, layout)?;
            h = out;
            skips.extend(states);
        }
        h = self.mid_block.forward(&h, &temb, &context, layout)?;
        let down_block_res_samples = skips
            .iter()
            .zip(&self.controlnet_down_blocks)
            .map(|(s, zc)| zc.forward(s)? * conditioning_scale)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid_block_res_sample = (self.controlnet_mid_block.forward(&h)? * conditioning_scale)?;
        Ok(ControlNetOutput {
            down_block_res_samples,
            mid_block_res_sample,
        })
    }
}

/// A conditioning image after the ControlNet's `controlnet_cond_embedding`
/// ([`ControlNetModel::embed_condition`]), with the image's shape for the checks.
#[derive(Debug, Clone)]
pub struct ControlCondition {
    embedded: Tensor,
    image_dims: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::unet::{PerBlock, UNet2DConditionConfig};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// An embedding made once and shared (as the two CFG halves and a face crop's steps do)
    /// gives the residuals of the plain forward bit for bit; a mismatched one is refused with
    /// both shapes.
    #[test]
    fn a_shared_condition_embedding_gives_the_same_residuals() -> TestResult {
        let dev = candle_core::Device::Cpu;
        let tiny =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let model = crate::model::BodyModel::load(&tiny, DType::F32, &dev)?;
        let net = &model.controlnet;
        let sample = Tensor::randn(0f32, 1.0, (4, 4, 8, 8), &dev)?;
        let image = Tensor::rand(0f32, 1.0, (4, 3, 64, 64), &dev)?;
        let embedded = net.embed_condition(&image, DType::F32)?;
        for (t, ctx_seed) in [(801.0, 0.5f32), (1.0, -1.0)] {
            let ctx = (Tensor::randn(0f32, 1.0, (1, 7, 32), &dev)? * f64::from(ctx_seed))?;
            let plain = net.forward(&sample, t, &ctx, &image, 1.5, Temporal::Window)?;
            let shared =
                net.forward_condition(&sample, t, &ctx, &embedded, 1.5, Temporal::Window)?;
            let pairs = plain
                .down_block_res_samples
                .iter()
                .zip(&shared.down_block_res_samples)
                .chain([(&plain.mid_block_res_sample, &shared.mid_block_res_sample)]);
            assert_eq!(
                plain.down_block_res_samples.len(),
                shared.down_block_res_samples.len()
            );
            for (i, (a, b)) in pairs.enumerate() {
                let (a, b) = (
                    a.flatten_all()?.to_vec1::<f32>()?,
                    b.flatten_all()?.to_vec1::<f32>()?,
                );
                assert_eq!(a.len(), b.len());
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "residual {i} at t = {t} differs"
                );
            }
        }
        let small = net.embed_condition(&image.narrow(0, 0, 2)?, DType::F32)?;
        let ctx = Tensor::zeros((1, 7, 32), DType::F32, &dev)?;
        let msg = net
            .forward_condition(&sample, 1.0, &ctx, &small, 1.0, Temporal::Window)
            .err()
            .ok_or("a 2-frame embedding accepted for 4 frames")?
            .to_string();
        assert!(
            msg.contains("[2, 3, 64, 64], expected [4, 3, 64, 64]"),
            "{msg}"
        );
        let msg = net
            .embed_condition(
                &Tensor::zeros((4, 1, 64, 64), DType::F32, &dev)?,
                DType::F32,
            )
            .err()
            .ok_or("a 1-channel image accepted")?
            .to_string();
        assert!(
            msg.contains("[4, 1, 64, 64], expected [batch, 3, height, width]"),
            "{msg}"
        );
        let f64_cond = ControlCondition {
            embedded: embedded.embedded.to_dtype(DType::F64)?,
            image_dims: embedded.image_dims.clone(),
        };
        let msg = net
            .forward_condition(&sample, 1.0, &ctx, &f64_cond, 1.0, Temporal::Window)
            .err()
            .ok_or("an f64 embedding accepted for an f32 sample")?
            .to_string();
        assert!(msg.contains("embedded as F64"), "{msg}");
        Ok(())
    }

    #[test]
    fn both_configs_read_the_shared_encoder_keys() -> TestResult {
        let json = serde_json::json!({
            "in_channels": 9,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "block_out_channels": [32, 64],
            "freq_shift": 1,
            "attention_head_dim": [2, 4],
            "norm_num_groups": 8,
            "class_embed_type": null,
            "conditioning_channels": 1,
            "out_channels": 4,
            "a_key_this_port_does_not_know": true
        });
        let unet: UNet2DConditionConfig = serde_json::from_value(json.clone())?;
        let cn: ControlNetConfig = serde_json::from_value(json)?;
        assert_eq!(unet.encoder, cn.encoder);
        assert_eq!((unet.in_channels, cn.in_channels), (9, 9));
        assert_eq!(cn.conditioning_channels, 1);
        assert_eq!(unet.encoder.block_out_channels, [32, 64]);
        assert_eq!(unet.encoder.freq_shift, 1.0);
        assert_eq!(unet.encoder.attention_head_dim, PerBlock::Many(vec![2, 4]));
        assert_eq!(unet.encoder.norm_num_groups, Some(8));
        // Absent keys take the SD1.5 values.
        assert_eq!(cn.encoder.cross_attention_dim, PerBlock::One(768));
        assert_eq!(cn.conditioning_embedding_out_channels, [16, 32, 96, 256]);
        assert_eq!(
            UNet2DConditionConfig::default().encoder,
            ControlNetConfig::default().encoder
        );
        let empty: ControlNetConfig = serde_json::from_str("{}")?;
        assert_eq!(empty, ControlNetConfig::default());
        let empty: UNet2DConditionConfig = serde_json::from_str("{}")?;
        assert_eq!(empty, UNet2DConditionConfig::default());
        Ok(())
    }

    #[test]
    fn every_problem_is_named_with_its_value() -> TestResult {
        let arch = ControlNetConfig::default().validate()?;
        assert_eq!(arch.num_down_residuals(), 12);
        assert!(!arch.bgr);
        let arch = UNet2DConditionConfig::default().validate()?;
        assert_eq!((arch.in_channels(), arch.cross_attention_dim()), (4, 768));

        let mut cn = ControlNetConfig::default();
        cn.encoder.act_fn = "gelu".into();
        cn.encoder.layers_per_block = PerBlock::Many(vec![1, 2]);
        cn.encoder.cross_attention_dim = PerBlock::Many(vec![768, 768, 1024, 768]);
        cn.encoder.mid_block_scale_factor = 0.0;
        cn.controlnet_conditioning_channel_order = "rbg".into();
        cn.in_channels = 0;
        let msg = cn
            .validate()
            .err()
            .ok_or("bad config accepted")?
            .to_string();
        for want in [
            "<ControlNetModel config>",
            "`act_fn` is \"gelu\", expected \"silu\" (unsupported)",
            "`layers_per_block` has 2 entries ([1, 2]), expected one per down block (4)",
            "`cross_attention_dim` is [768, 768, 1024, 768], expected one width for all blocks",
            "`mid_block_scale_factor` is 0, expected > 0",
            "`controlnet_conditioning_channel_order` is \"rbg\", expected \"rgb\" or \"bgr\"",
            "`in_channels` is 0, expected a positive number",
        ] {
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }

        let mut unet = UNet2DConditionConfig {
            conv_out_kernel: 2,
            time_cond_proj_dim: Some(4),
            ..UNet2DConditionConfig::default()
        };
        unet.up_block_types.pop();
        unet.encoder.only_cross_attention = PerBlock::One(true);
        let msg = unet
            .validate()
            .err()
            .ok_or("bad config accepted")?
            .to_string();
        for want in [
            "<UNet2DConditionModel config>",
            "`conv_out_kernel` is 2, expected an odd kernel size",
            "`time_cond_proj_dim` is Some(4), expected None (unsupported)",
            "`up_block_types` has 3 entries, expected 4 (as many as `down_block_types`)",
            "`only_cross_attention` is [true, true, true, true], expected false (unsupported)",
        ] {
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }

        unet = UNet2DConditionConfig {
            class_name: Some("ControlNetModel".into()),
            ..UNet2DConditionConfig::default()
        };
        let msg = unet
            .validate()
            .err()
            .ok_or("wrong class accepted")?
            .to_string();
        assert!(
            msg.contains(
                "`_class_name` is \"ControlNetModel\", expected \"UNet2DConditionModel\" (is this \
                 another component's config?)"
            ),
            "{msg}"
        );
        cn = ControlNetConfig::default();
        cn.encoder.down_block_types.clear();
        let msg = cn.validate().err().ok_or("no blocks accepted")?.to_string();
        assert!(
            msg.contains("`down_block_types` is empty, expected at least one block"),
            "{msg}"
        );
        Ok(())
    }
}
