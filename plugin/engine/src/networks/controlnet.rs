//! diffusers `ControlNetModel`, in 2D and in Make-Your-Anchor's 3D window variant.
//!
//! A copy of the UNet's encoder half (`conv_in`, `time_embedding`, down blocks, mid block) plus the
//! conditioning embedding (`controlnet_cond_embedding`) and one zero-initialised 1×1 conv per skip
//! state (`controlnet_down_blocks.{i}`) and for the mid block (`controlnet_mid_block`). Every
//! residual is multiplied by the conditioning scale (spec §1.4). In [`Temporal::Window`] mode the
//! ResNet GroupNorms share statistics across the window's frames but self-attention stays per frame
//! (`IndividualAttention`, spec §2, §7.2).
use std::path::{Path, PathBuf};

use super::conv::{Conv2d, Conv2dConfig};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::conv;
use super::unet::{check_sample, context_for_batch, expect_eq, read_config, PerBlock, Topology};
use super::unet_blocks::{DownBlock, DownBlockSpec, FrameLayout, MidBlock, ResnetCommon};
use crate::error::{EngineError, Result};

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
/// take the Stable Diffusion 1.5 values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControlNetConfig {
    /// `_class_name`: must be `ControlNetModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Channels of the control image (3).
    pub conditioning_channels: usize,
    /// Timestep embedding order `[cos | sin]`.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep sinusoid.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` / `DownBlock2D`, one per level.
    pub down_block_types: Vec<String>,
    /// Must be `UNetMidBlock2DCrossAttn`.
    pub mid_block_type: Option<String>,
    /// Must be false everywhere.
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down block.
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the stride-2 downsampling conv.
    pub downsample_padding: usize,
    /// Output scale of the mid block's ResNets.
    pub mid_block_scale_factor: f64,
    /// Must be `silu`.
    pub act_fn: String,
    /// GroupNorm groups.
    pub norm_num_groups: Option<usize>,
    /// ResNet GroupNorm eps.
    pub norm_eps: f64,
    /// Width of the encoder hidden states.
    pub cross_attention_dim: PerBlock<usize>,
    /// `BasicTransformerBlock`s per transformer.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Legacy name: the number of heads when `num_attention_heads` is null.
    pub attention_head_dim: PerBlock<usize>,
    /// Number of heads (takes precedence over `attention_head_dim`).
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear instead of 1×1-conv transformer projections.
    pub use_linear_projection: bool,
    /// Ignored (f32 scores).
    pub upcast_attention: bool,
    /// Must be `default`.
    pub resnet_time_scale_shift: String,
    /// Must be null.
    pub class_embed_type: Option<String>,
    /// Must be null.
    pub num_class_embeds: Option<usize>,
    /// Must be null.
    pub addition_embed_type: Option<String>,
    /// Must be null.
    pub encoder_hid_dim: Option<usize>,
    /// Must be null.
    pub encoder_hid_dim_type: Option<String>,
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
            in_channels: 4,
            conditioning_channels: 3,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(768),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            class_embed_type: None,
            num_class_embeds: None,
            addition_embed_type: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            controlnet_conditioning_channel_order: "rgb".into(),
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            global_pool_conditions: false,
            source: None,
        }
    }
}

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

    /// Checks every value once and returns the plain architecture.
    pub fn validate(&self) -> Result<ControlNetArchitecture> {
        let mut e = Vec::new();
        if let Some(class) = &self.class_name {
            if class != "ControlNetModel" {
                return Err(self.error(format!(
                    "`_class_name` is {class:?}, expected \"ControlNetModel\" (is this another \
                     component's config?)"
                )));
            }
        }
        let n = self.down_block_types.len();
        if n == 0 {
            return Err(
                self.error("`down_block_types` is empty, expected at least one block".into())
            );
        }
        if self.block_out_channels.len() != n {
            return Err(self.error(format!(
                "`block_out_channels` has {} entries ({:?}), expected one per down block ({n})",
                self.block_out_channels.len(),
                self.block_out_channels
            )));
        }
        let expand = |v: &PerBlock<usize>, key: &str, e: &mut Vec<String>| match v.expand(n, key) {
            Ok(v) => v,
            Err(m) => {
                e.push(m);
                vec![1; n]
            }
        };
        let heads_cfg = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        let layers = expand(&self.layers_per_block, "layers_per_block", &mut e);
        let transformer_layers = expand(
            &self.transformer_layers_per_block,
            "transformer_layers_per_block",
            &mut e,
        );
        let heads = expand(heads_cfg, "attention_head_dim", &mut e);
        let cross = expand(&self.cross_attention_dim, "cross_attention_dim", &mut e);
        if cross.iter().any(|&c| c != cross[0]) {
            e.push(format!(
                "`cross_attention_dim` is {cross:?}, expected one width for all blocks"
            ));
        }
        match self.only_cross_attention.expand(n, "only_cross_attention") {
            Ok(v) if v.iter().any(|&b| b) => e.push(format!(
                "`only_cross_attention` is {v:?}, expected false (unsupported)"
            )),
            Ok(_) => {}
            Err(m) => e.push(m),
        }
        let groups = match self.norm_num_groups {
            Some(g) if g > 0 => g,
            other => {
                e.push(format!(
                    "`norm_num_groups` is {other:?}, expected a positive number"
                ));
                1
            }
        };
        if self.in_channels == 0 || self.conditioning_channels == 0 {
            e.push(format!(
                "`in_channels`/`conditioning_channels` are {}/{}, expected positive",
                self.in_channels, self.conditioning_channels
            ));
        }
        let emb = &self.conditioning_embedding_out_channels;
        if emb.is_empty() || emb.contains(&0) {
            e.push(format!(
                "`conditioning_embedding_out_channels` is {emb:?}, expected positive channel counts"
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            e.push(format!("`norm_eps` is {}, expected > 0", self.norm_eps));
        }
        let bgr = match self.controlnet_conditioning_channel_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => {
                e.push(format!(
                    "`controlnet_conditioning_channel_order` is {other:?}, expected \"rgb\" or \"bgr\""
                ));
                false
            }
        };
        expect_eq(
            &mut e,
            "mid_block_type",
            &self.mid_block_type.as_deref(),
            &Some("UNetMidBlock2DCrossAttn"),
        );
        expect_eq(&mut e, "act_fn", &self.act_fn.as_str(), &"silu");
        expect_eq(
            &mut e,
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift.as_str(),
            &"default",
        );
        expect_eq(&mut e, "class_embed_type", &self.class_embed_type, &None);
        expect_eq(&mut e, "num_class_embeds", &self.num_class_embeds, &None);
        expect_eq(
            &mut e,
            "addition_embed_type",
            &self.addition_embed_type,
            &None,
        );
        expect_eq(&mut e, "encoder_hid_dim", &self.encoder_hid_dim, &None);
        expect_eq(
            &mut e,
            "encoder_hid_dim_type",
            &self.encoder_hid_dim_type,
            &None,
        );
        expect_eq(
            &mut e,
            "global_pool_conditions",
            &self.global_pool_conditions,
            &false,
        );
        if !e.is_empty() {
            return Err(self.error(e.join("; ")));
        }
        let topology = Topology {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: layers,
            transformer_layers,
            heads,
            cross_attention_dims: cross,
            use_linear_projection: self.use_linear_projection,
            downsample_padding: self.downsample_padding,
            groups,
        };
        topology.check(&mut e);
        let down = topology.down_blocks(&self.down_block_types, &mut e);
        if !e.is_empty() {
            return Err(self.error(e.join("; ")));
        }
        let c0 = self.block_out_channels[0];
        Ok(ControlNetArchitecture {
            in_channels: self.in_channels,
            conditioning_channels: self.conditioning_channels,
            bgr,
            embedding_channels: emb.clone(),
            time_proj: Timesteps {
                num_channels: c0,
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
            },
            temb_channels: 4 * c0,
            common: ResnetCommon {
                temb_channels: 4 * c0,
                groups,
                eps: self.norm_eps,
            },
            topology,
            down,
            mid_scale_factor: self.mid_block_scale_factor,
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
        let mut h = self.conv_in.forward(x)?.silu()?;
        for block in &self.blocks {
            h = block.forward(&h)?.silu()?;
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
    /// h·8, w·8]` (RGB in [0, 1], spec §7.6), each multiplied by `conditioning_scale`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        controlnet_cond: &Tensor,
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
            controlnet_cond,
            conditioning_scale,
            mode,
        )
    }

    /// [`Self::forward`] with one timestep per batch entry (training, spec §6).
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
        self.forward_embedded(
            sample,
            &t_proj,
            encoder_hidden_states,
            controlnet_cond,
            conditioning_scale,
            mode,
        )
    }

    /// The network after the timestep sinusoid `t_proj: [B, C0]`.
    fn forward_embedded(
        &self,
        sample: &Tensor,
        t_proj: &Tensor,
        encoder_hidden_states: &Tensor,
        controlnet_cond: &Tensor,
        conditioning_scale: f64,
        mode: Temporal,
    ) -> Result<ControlNetOutput> {
        let b = sample.dim(0)?;
        let (_, _, h, w) = sample.dims4()?;
        let s = self.arch.conditioning_downscale();
        let expected = [b, self.arch.conditioning_channels, h * s, w * s];
        if controlnet_cond.dims() != expected {
            return Err(EngineError::Input(format!(
                "ControlNet conditioning image has shape {:?}, expected {expected:?}",
                controlnet_cond.dims()
            )));
        }
        let context = context_for_batch(encoder_hidden_states, b, self.arch.cross_attention_dim())?;
        let layout = FrameLayout::new(mode, b, false)?;
        let temb = self.time_embedding.forward(t_proj)?;
        let cond = controlnet_cond.to_dtype(sample.dtype())?;
        let cond = if self.arch.bgr {
            let c = self.arch.conditioning_channels;
            let idx = Tensor::arange(0u32, c as u32, cond.device())?.flip(&[0])?;
            cond.index_select(&idx, 1)?
        } else {
            cond
        };
        let mut h =
            (self.conv_in.forward(sample)? + self.controlnet_cond_embedding.forward(&cond)?)?;
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
