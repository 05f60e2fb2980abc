//! diffusers `UNet2DConditionModel`, in 2D and in Make-Your-Anchor's inflated 3D window mode.
//!
//! Built from the checkpoint's `config.json` ([`UNet2DConditionConfig`], field names = JSON keys),
//! checked once ([`UNet2DConditionConfig::validate`]) into a plain [`UNetArchitecture`]. Module
//! fields and `vb.pp()` paths are the diffusers checkpoint keys. In [`Temporal::Window`] mode the
//! batch holds the frames of one window: `attn1` attends over all their tokens and the ResNet
//! GroupNorms and `conv_norm_out` share statistics across them, with no new
//! weights. ControlNet residuals are added to the skip states and the mid block; how the last down
//! residual is treated is a [`ControlResiduals`] choice.
use std::path::{Path, PathBuf};

use super::conv::Conv2d;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use super::controlnet::ControlNetOutput;
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::group_norm::GroupNorm;
use super::resnet::conv;
use super::transformer::TransformerSpec;
use super::unet_blocks::{
    DownBlock, DownBlockSpec, FrameLayout, MidBlock, ResnetCommon, UpBlock, UpBlockSpec,
};
use crate::error::{EngineError, Result};

pub use super::unet_blocks::Temporal;

/// How a ControlNet's down residuals enter the UNet.
///
/// The original Make-Your-Anchor 3D UNet adds them to its skip states *in place*
/// (`down_block_res_sample += residual`). Its last skip state is the very tensor the last down
/// block returned as `sample`, so the mid block's input also becomes `sample + r_last` (the
/// ControlNet's last down residual, already scaled). The mid residual is then added after the mid
/// block as usual. diffusers' `UNet2DConditionModel` adds out of place and has no such term; the
/// original's training (2D diffusers UNet) and its face inpainting pipeline behave that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlResiduals {
    /// As the original inference code: the last down residual also reaches the mid block's input.
    /// It produced the paper's results.
    #[default]
    Original,
    /// As diffusers (and the original's training): skip states and mid output only.
    Standard,
}

impl ControlResiduals {
    /// The name used on the command line and in `anchor.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Standard => "standard",
        }
    }
}

impl std::fmt::Display for ControlResiduals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ControlResiduals {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "original" => Ok(Self::Original),
            "standard" => Ok(Self::Standard),
            _ => Err(EngineError::Input(format!(
                "control residuals \"{s}\": expected original (as the original inference code, \
                 the default) or standard (as diffusers and training)"
            ))),
        }
    }
}

/// A config value that is either one value for every block or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    One(T),
    /// One value per down block.
    Many(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    /// Expands to `n` values; a list of the wrong length is an error saying how long it is
    /// (for [`run_checks`], which names the key).
    pub(crate) fn values(&self, n: usize) -> std::result::Result<Vec<T>, String> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Many(v) => match one_per_block(v, n) {
                Some(problem) => Err(problem),
                None => Ok(v.clone()),
            },
        }
    }
}

/// Reads a JSON config file into `T`, naming the file on error.
pub(crate) fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            EngineError::Missing {
                path: path.to_path_buf(),
                hint: "a diffusers model folder holds config.json beside the weights".into(),
            }
        } else {
            EngineError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Config {
        path: path.to_path_buf(),
        message: format!("not a valid config: {e}"),
    })
}

/// One row of a config check: a JSON key and a test of its value that, on failure, says what was
/// found and what was expected (`is 7, expected …`). [`run_checks`] prefixes the key.
pub(crate) type ConfigCheck<C> = (&'static str, fn(&C) -> Option<String>);

/// Runs every row of `rows` on `config`, one message per failing row.
pub(crate) fn run_checks<C>(config: &C, rows: &[ConfigCheck<C>], errors: &mut Vec<String>) {
    errors.extend(
        rows.iter()
            .filter_map(|(key, check)| check(config).map(|m| format!("`{key}` {m}"))),
    );
}

/// A problem unless `found` is the neutral value `expected` of a key this port does not support.
pub(crate) fn unsupported<T: PartialEq + std::fmt::Debug>(found: T, expected: T) -> Option<String> {
    (found != expected).then(|| format!("is {found:?}, expected {expected:?} (unsupported)"))
}

/// A problem unless the channel count `n` is positive.
pub(crate) fn positive_count(n: usize) -> Option<String> {
    (n == 0).then(|| format!("is {n}, expected a positive number"))
}

/// A problem unless the scale `x` is positive.
fn positive_scale(x: f64) -> Option<String> {
    (x.is_nan() || x <= 0.0).then(|| format!("is {x}, expected > 0"))
}

/// A problem unless `values` has one entry per down block.
fn one_per_block<T: std::fmt::Debug>(values: &[T], n: usize) -> Option<String> {
    (values.len() != n).then(|| {
        format!(
            "has {} entries ({values:?}), expected one per down block ({n})",
            values.len()
        )
    })
}

/// A problem with the length of a per-block value.
fn per_block_length<T: Clone + std::fmt::Debug>(v: &PerBlock<T>, n: usize) -> Option<String> {
    v.values(n).err()
}

/// A problem unless `kernel` is odd.
fn odd_kernel(kernel: usize) -> Option<String> {
    kernel
        .is_multiple_of(2)
        .then(|| format!("is {kernel}, expected an odd kernel size"))
}

/// Checks `_class_name`, when present, against the class a config is read as.
pub(crate) fn check_class(found: Option<&str>, expected: &str) -> std::result::Result<(), String> {
    match found {
        Some(class) if class != expected => Err(format!(
            "`_class_name` is {class:?}, expected {expected:?} (is this another component's \
             config?)"
        )),
        _ => Ok(()),
    }
}

/// The `config.json` keys of the encoder half (`time_embedding`, the down blocks and the mid
/// block), which a diffusers `ControlNetModel` shares with the `UNet2DConditionModel` it is made
/// from (`ControlNetModel.from_unet` copies them). Both configs flatten it, so its field names are
/// JSON keys too; absent keys take the Stable Diffusion 1.5 values. `in_channels` is not shared:
/// the face model's ControlNet takes 4 latent channels beside a 9-channel inpainting UNet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct EncoderConfig {
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
    /// ResNet layers per down block (a UNet's up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the stride-2 downsampling conv.
    pub downsample_padding: usize,
    /// Output scale of the mid block's ResNets.
    pub mid_block_scale_factor: f64,
    /// Must be `silu`.
    pub act_fn: String,
    /// GroupNorm groups of ResNets, transformers and the UNet's `conv_norm_out`.
    pub norm_num_groups: Option<usize>,
    /// ResNet (and the UNet's `conv_norm_out`) GroupNorm eps.
    pub norm_eps: f64,
    /// Width of the encoder hidden states (diffusers' own default is 1280; SD1.5 sets 768).
    pub cross_attention_dim: PerBlock<usize>,
    /// `BasicTransformerBlock`s per transformer.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Legacy name: diffusers reads it as the number of heads (not their width) when
    /// `num_attention_heads` is null.
    pub attention_head_dim: PerBlock<usize>,
    /// Number of heads (takes precedence over `attention_head_dim`).
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear instead of 1×1-conv transformer projections.
    pub use_linear_projection: bool,
    /// Only matters for f16 attention; ignored here (scores are computed in f32 anyway).
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
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

/// The encoder's checks, one row per key. Per-block lists are checked against the number of
/// down blocks.
const ENCODER_CHECKS: &[ConfigCheck<EncoderConfig>] = &[
    ("block_out_channels", |c| {
        one_per_block(&c.block_out_channels, c.levels())
    }),
    ("layers_per_block", |c| {
        per_block_length(&c.layers_per_block, c.levels())
    }),
    ("transformer_layers_per_block", |c| {
        per_block_length(&c.transformer_layers_per_block, c.levels())
    }),
    ("attention_head_dim", |c| {
        per_block_length(c.heads(), c.levels())
    }),
    ("cross_attention_dim", |c| {
        match c.cross_attention_dim.values(c.levels()) {
            Ok(v) if v.iter().any(|&w| w != v[0]) => {
                Some(format!("is {v:?}, expected one width for all blocks"))
            }
            Ok(_) => None,
            Err(m) => Some(m),
        }
    }),
    ("only_cross_attention", |c| {
        match c.only_cross_attention.values(c.levels()) {
            Ok(v) if v.iter().any(|&b| b) => {
                Some(format!("is {v:?}, expected false (unsupported)"))
            }
            Ok(_) => None,
            Err(m) => Some(m),
        }
    }),
    ("norm_num_groups", |c| match c.norm_num_groups {
        Some(g) if g > 0 => None,
        other => Some(format!("is {other:?}, expected a positive number")),
    }),
    ("norm_eps", |c| positive_scale(c.norm_eps)),
    ("mid_block_scale_factor", |c| {
        positive_scale(c.mid_block_scale_factor)
    }),
    ("mid_block_type", |c| {
        unsupported(c.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"))
    }),
    ("act_fn", |c| unsupported(c.act_fn.as_str(), "silu")),
    ("resnet_time_scale_shift", |c| {
        unsupported(c.resnet_time_scale_shift.as_str(), "default")
    }),
    ("class_embed_type", |c| {
        unsupported(&c.class_embed_type, &None)
    }),
    ("num_class_embeds", |c| {
        unsupported(c.num_class_embeds, None)
    }),
    ("addition_embed_type", |c| {
        unsupported(&c.addition_embed_type, &None)
    }),
    ("encoder_hid_dim", |c| unsupported(c.encoder_hid_dim, None)),
    ("encoder_hid_dim_type", |c| {
        unsupported(&c.encoder_hid_dim_type, &None)
    }),
];

impl EncoderConfig {
    /// Number of down blocks.
    fn levels(&self) -> usize {
        self.down_block_types.len()
    }

    /// The head counts: `num_attention_heads`, else the legacy `attention_head_dim`.
    fn heads(&self) -> &PerBlock<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Runs the encoder's rows and then the network's own `rows` on `config`, and returns the
    /// topology once every row passes; otherwise every problem found.
    pub(crate) fn check<C>(
        &self,
        config: &C,
        rows: &[ConfigCheck<C>],
    ) -> std::result::Result<Topology, Vec<String>> {
        if self.levels() == 0 {
            return Err(vec![
                "`down_block_types` is empty, expected at least one block".into(),
            ]);
        }
        let mut errors = Vec::new();
        run_checks(self, ENCODER_CHECKS, &mut errors);
        run_checks(config, rows, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let n = self.levels();
        // The rows have checked every length; the fallback is never taken.
        let expand = |v: &PerBlock<usize>| v.values(n).unwrap_or_else(|_| vec![1; n]);
        Ok(Topology {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: expand(&self.layers_per_block),
            transformer_layers: expand(&self.transformer_layers_per_block),
            heads: expand(self.heads()),
            cross_attention_dims: expand(&self.cross_attention_dim),
            use_linear_projection: self.use_linear_projection,
            downsample_padding: self.downsample_padding,
            groups: self.norm_num_groups.unwrap_or(1),
        })
    }

    /// The timestep sinusoid, as wide as the first level.
    pub(crate) fn time_proj(&self) -> Timesteps {
        Timesteps {
            num_channels: self.block_out_channels[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        }
    }

    /// What every ResNet of a checked `topology` shares (the time embedding is four times as
    /// wide as the first level).
    pub(crate) fn resnet_common(&self, topology: &Topology) -> ResnetCommon {
        ResnetCommon {
            temb_channels: 4 * topology.block_out_channels[0],
            groups: topology.groups,
            eps: self.norm_eps,
        }
    }
}

/// The `config.json` of a diffusers `UNet2DConditionModel`. Field names are the JSON keys; absent
/// keys take the Stable Diffusion 1.5 values. Keys this port does not know are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// `_class_name`: must be `UNet2DConditionModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// The encoder half's keys, shared with the ControlNet.
    #[serde(flatten)]
    pub encoder: EncoderConfig,
    /// Latent channels in (4; 9 for the inpainting UNet).
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Map the input from [0,1] to [-1,1] first.
    pub center_input_sample: bool,
    /// `CrossAttnUpBlock2D` / `UpBlock2D`, one per level.
    pub up_block_types: Vec<String>,
    /// Must be false.
    pub dual_cross_attention: bool,
    /// Must be `positional`.
    pub time_embedding_type: String,
    /// Must be null.
    pub time_embedding_dim: Option<usize>,
    /// Must be null.
    pub time_embedding_act_fn: Option<String>,
    /// Must be null.
    pub timestep_post_act: Option<String>,
    /// Must be null.
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in` (odd).
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    pub conv_out_kernel: usize,
    /// Must be `default`.
    pub attention_type: String,
    /// Must be null.
    pub cross_attention_norm: Option<String>,
    /// Must be false.
    pub resnet_skip_time_act: bool,
    /// Must be 1.
    pub resnet_out_scale_factor: f64,
    /// Must be null.
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Where the config was read from (for error messages); not a JSON key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            encoder: EncoderConfig::default(),
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            dual_cross_attention: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            cross_attention_norm: None,
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            reverse_transformer_layers_per_block: None,
            source: None,
        }
    }
}

/// The UNet's own checks (beyond [`ENCODER_CHECKS`]), one row per key.
const UNET_CHECKS: &[ConfigCheck<UNet2DConditionConfig>] = &[
    ("up_block_types", |c| {
        let (found, n) = (c.up_block_types.len(), c.encoder.levels());
        (found != n)
            .then(|| format!("has {found} entries, expected {n} (as many as `down_block_types`)"))
    }),
    ("in_channels", |c| positive_count(c.in_channels)),
    ("out_channels", |c| positive_count(c.out_channels)),
    ("conv_in_kernel", |c| odd_kernel(c.conv_in_kernel)),
    ("conv_out_kernel", |c| odd_kernel(c.conv_out_kernel)),
    ("dual_cross_attention", |c| {
        unsupported(c.dual_cross_attention, false)
    }),
    ("time_embedding_type", |c| {
        unsupported(c.time_embedding_type.as_str(), "positional")
    }),
    ("time_embedding_dim", |c| {
        unsupported(c.time_embedding_dim, None)
    }),
    ("time_embedding_act_fn", |c| {
        unsupported(&c.time_embedding_act_fn, &None)
    }),
    ("timestep_post_act", |c| {
        unsupported(&c.timestep_post_act, &None)
    }),
    ("time_cond_proj_dim", |c| {
        unsupported(c.time_cond_proj_dim, None)
    }),
    ("attention_type", |c| {
        unsupported(c.attention_type.as_str(), "default")
    }),
    ("cross_attention_norm", |c| {
        unsupported(&c.cross_attention_norm, &None)
    }),
    ("resnet_skip_time_act", |c| {
        unsupported(c.resnet_skip_time_act, false)
    }),
    ("resnet_out_scale_factor", |c| {
        unsupported(c.resnet_out_scale_factor, 1.0)
    }),
    ("reverse_transformer_layers_per_block", |c| {
        unsupported(&c.reverse_transformer_layers_per_block, &None)
    }),
];

/// The per-level settings shared by the UNet and the ControlNet, expanded to one value per block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Topology {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub heads: Vec<usize>,
    pub cross_attention_dims: Vec<usize>,
    pub use_linear_projection: bool,
    pub downsample_padding: usize,
    pub groups: usize,
}

impl Topology {
    fn transformer(&self, i: usize) -> TransformerSpec {
        TransformerSpec {
            heads: self.heads[i],
            num_layers: self.transformer_layers[i],
            cross_attention_dim: self.cross_attention_dims[i],
            use_linear_projection: self.use_linear_projection,
        }
    }

    /// Checks divisibility of every level's channels by groups and heads.
    pub fn check(&self, errors: &mut Vec<String>) {
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(self.groups) {
                errors.push(format!(
                    "`block_out_channels[{i}]` = {c} is not divisible by `norm_num_groups` = {}",
                    self.groups
                ));
            }
            let h = self.heads[i];
            if h == 0 || !c.is_multiple_of(h) {
                errors.push(format!(
                    "`block_out_channels[{i}]` = {c} is not divisible by the {h} attention heads \
                     (`attention_head_dim`/`num_attention_heads`)"
                ));
            }
        }
        for (key, values) in [
            ("layers_per_block", &self.layers_per_block),
            ("transformer_layers_per_block", &self.transformer_layers),
            ("cross_attention_dim", &self.cross_attention_dims),
        ] {
            if values.contains(&0) {
                errors.push(format!("`{key}` is {values:?}, expected positive values"));
            }
        }
    }

    /// Down blocks in order; `types[i]` must be a known down block.
    pub fn down_blocks(&self, types: &[String], errors: &mut Vec<String>) -> Vec<DownBlockSpec> {
        let n = self.block_out_channels.len();
        let mut out = Vec::with_capacity(n);
        let mut output_channel = self.block_out_channels.first().copied().unwrap_or(0);
        for (i, kind) in types.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = self.block_out_channels[i];
            let transformer = match kind.as_str() {
                "CrossAttnDownBlock2D" => Some(self.transformer(i)),
                "DownBlock2D" => None,
                other => {
                    errors.push(format!(
                        "`down_block_types[{i}]` is {other:?}, expected \"CrossAttnDownBlock2D\" or \"DownBlock2D\""
                    ));
                    None
                }
            };
            out.push(DownBlockSpec {
                in_channels: input_channel,
                out_channels: output_channel,
                num_layers: self.layers_per_block[i],
                transformer,
                add_downsample: i + 1 != n,
                downsample_padding: self.downsample_padding,
            });
        }
        out
    }

    /// The mid block's transformer (last level's settings).
    pub fn mid(&self) -> TransformerSpec {
        self.transformer(self.block_out_channels.len() - 1)
    }
}

/// The checked, plain form of a UNet config.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetArchitecture {
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) center_input_sample: bool,
    pub(crate) conv_in_kernel: usize,
    pub(crate) conv_out_kernel: usize,
    pub(crate) time_proj: Timesteps,
    pub(crate) temb_channels: usize,
    pub(crate) common: ResnetCommon,
    pub(crate) topology: Topology,
    pub(crate) down: Vec<DownBlockSpec>,
    pub(crate) mid_scale_factor: f64,
    pub(crate) up: Vec<UpBlockSpec>,
}

impl UNetArchitecture {
    /// Latent channels the UNet takes (4, or 9 for inpainting).
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Latent channels it returns.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// Width the encoder hidden states must have.
    pub fn cross_attention_dim(&self) -> usize {
        self.topology.cross_attention_dims[0]
    }
}

impl UNet2DConditionConfig {
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
                .unwrap_or_else(|| PathBuf::from("<UNet2DConditionModel config>")),
            message,
        }
    }

    /// Checks every value once and returns the plain architecture. All problems are reported
    /// together, each quoting the value found and the one expected.
    pub fn validate(&self) -> Result<UNetArchitecture> {
        check_class(self.class_name.as_deref(), "UNet2DConditionModel")
            .map_err(|m| self.error(m))?;
        let topology = self
            .encoder
            .check(self, UNET_CHECKS)
            .map_err(|e| self.error(e.join("; ")))?;
        let mut e = Vec::new();
        topology.check(&mut e);
        let down = topology.down_blocks(&self.encoder.down_block_types, &mut e);
        let up = self.up_blocks(&topology, &mut e);
        if !e.is_empty() {
            return Err(self.error(e.join("; ")));
        }
        let common = self.encoder.resnet_common(&topology);
        Ok(UNetArchitecture {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            center_input_sample: self.center_input_sample,
            conv_in_kernel: self.conv_in_kernel,
            conv_out_kernel: self.conv_out_kernel,
            time_proj: self.encoder.time_proj(),
            temb_channels: common.temb_channels,
            common,
            topology,
            down,
            mid_scale_factor: self.encoder.mid_block_scale_factor,
            up,
        })
    }

    /// Up blocks, mirroring the down levels (diffusers' `reversed_*` lists).
    fn up_blocks(&self, t: &Topology, errors: &mut Vec<String>) -> Vec<UpBlockSpec> {
        let n = t.block_out_channels.len();
        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let channels = rev(&t.block_out_channels);
        let layers = rev(&t.layers_per_block);
        let tl = rev(&t.transformer_layers);
        let heads = rev(&t.heads);
        let cross = rev(&t.cross_attention_dims);
        let mut out = Vec::with_capacity(n);
        let mut output_channel = channels[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = channels[i];
            let input_channel = channels[(i + 1).min(n - 1)];
            let transformer = match kind.as_str() {
                "CrossAttnUpBlock2D" => Some(TransformerSpec {
                    heads: heads[i],
                    num_layers: tl[i],
                    cross_attention_dim: cross[i],
                    use_linear_projection: t.use_linear_projection,
                }),
                "UpBlock2D" => None,
                other => {
                    errors.push(format!(
                        "`up_block_types[{i}]` is {other:?}, expected \"CrossAttnUpBlock2D\" or \"UpBlock2D\""
                    ));
                    None
                }
            };
            out.push(UpBlockSpec {
                in_channels: input_channel,
                prev_output_channel,
                out_channels: output_channel,
                num_layers: layers[i] + 1,
                transformer,
                add_upsample: i + 1 != n,
            });
        }
        out
    }
}

/// Checks the encoder hidden states against the network and repeats a batch of 1 to `batch`.
pub(crate) fn context_for_batch(
    encoder_hidden_states: &Tensor,
    batch: usize,
    width: usize,
) -> Result<Tensor> {
    let dims = encoder_hidden_states.dims();
    let ok = dims.len() == 3 && dims[2] == width && (dims[0] == batch || dims[0] == 1);
    if !ok {
        return Err(EngineError::Input(format!(
            "encoder_hidden_states have shape {dims:?}, expected [{batch} or 1, tokens, {width}] \
             (the appearance tokens must match `cross_attention_dim` = {width})"
        )));
    }
    if dims[0] == batch {
        Ok(encoder_hidden_states.clone())
    } else {
        Ok(encoder_hidden_states
            .broadcast_as((batch, dims[1], width))?
            .contiguous()?)
    }
}

/// Checks a `[B, C, H, W]` input; returns `B`.
pub(crate) fn check_sample(sample: &Tensor, channels: usize, what: &str) -> Result<usize> {
    match sample.dims() {
        &[b, c, h, w] if c == channels && b > 0 && h > 0 && w > 0 => Ok(b),
        dims => Err(EngineError::Input(format!(
            "{what} has shape {dims:?}, expected [batch, {channels}, height, width]"
        ))),
    }
}

/// diffusers `UNet2DConditionModel` with the inflated 3D window mode.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    arch: UNetArchitecture,
}

impl UNet2DConditionModel {
    /// Builds the network from `vb` (keys as in the diffusers checkpoint, no prefix).
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let arch = cfg.validate()?;
        let c0 = arch.topology.block_out_channels[0];
        let common = arch.common;
        let down_blocks = arch
            .down
            .iter()
            .enumerate()
            .map(|(i, spec)| DownBlock::new(spec, &common, vb.pp("down_blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let c_last = *arch.topology.block_out_channels.last().unwrap_or(&c0);
        let mid_block = MidBlock::new(
            c_last,
            &arch.topology.mid(),
            arch.mid_scale_factor,
            &common,
            vb.pp("mid_block"),
        )?;
        let up_blocks = arch
            .up
            .iter()
            .enumerate()
            .map(|(i, spec)| UpBlock::new(spec, &common, vb.pp("up_blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv(
                arch.in_channels,
                c0,
                arch.conv_in_kernel,
                1,
                vb.pp("conv_in"),
            )?,
            time_embedding: TimestepEmbedding::new(
                c0,
                arch.temb_channels,
                vb.pp("time_embedding"),
            )?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(common.groups, c0, common.eps, vb.pp("conv_norm_out"))?,
            conv_out: conv(
                c0,
                arch.out_channels,
                arch.conv_out_kernel,
                1,
                vb.pp("conv_out"),
            )?,
            arch,
        })
    }

    /// The checked architecture.
    pub fn architecture(&self) -> &UNetArchitecture {
        &self.arch
    }

    /// Predicts the noise for `sample: [B, in_channels, h, w]` at `timestep`, attending to
    /// `encoder_hidden_states: [B or 1, tokens, cross_attention_dim]`, with optional ControlNet
    /// residuals added as diffusers does ([`ControlResiduals::Standard`]). In
    /// [`Temporal::Window`] mode the `B` entries are the frames of one window.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        residuals: Option<&ControlNetOutput>,
        mode: Temporal,
    ) -> Result<Tensor> {
        let residuals = residuals.map(|r| (r, ControlResiduals::Standard));
        self.forward_controlled(sample, timestep, encoder_hidden_states, residuals, mode)
    }

    /// [`Self::forward`] with the ControlNet residuals added the given way.
    pub fn forward_controlled(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        residuals: Option<(&ControlNetOutput, ControlResiduals)>,
        mode: Temporal,
    ) -> Result<Tensor> {
        let b = check_sample(sample, self.arch.in_channels, "UNet sample")?;
        let t_proj = self
            .arch
            .time_proj
            .forward(timestep, b, sample.dtype(), sample.device())?;
        self.forward_embedded(sample, &t_proj, encoder_hidden_states, residuals, mode)
    }

    /// [`Self::forward`] with one timestep per batch entry (training).
    pub fn forward_timesteps(
        &self,
        sample: &Tensor,
        timesteps: &[f64],
        encoder_hidden_states: &Tensor,
        residuals: Option<&ControlNetOutput>,
        mode: Temporal,
    ) -> Result<Tensor> {
        let b = check_sample(sample, self.arch.in_channels, "UNet sample")?;
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
        let residuals = residuals.map(|r| (r, ControlResiduals::Standard));
        self.forward_embedded(sample, &t_proj, encoder_hidden_states, residuals, mode)
    }

    /// The network after the timestep sinusoid `t_proj: [B, C0]`.
    fn forward_embedded(
        &self,
        sample: &Tensor,
        t_proj: &Tensor,
        encoder_hidden_states: &Tensor,
        residuals: Option<(&ControlNetOutput, ControlResiduals)>,
        mode: Temporal,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let context = context_for_batch(encoder_hidden_states, b, self.arch.cross_attention_dim())?;
        let layout = FrameLayout::new(mode, b, true)?;
        let temb = crate::profile::time(crate::profile::Op::Other, || {
            self.time_embedding.forward(t_proj)
        })?;
        let x = if self.arch.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, &temb, &context, layout)?;
            h = out;
            skips.extend(states);
        }
        if let Some((r, how)) = residuals {
            if r.down_block_res_samples.len() != skips.len() {
                return Err(EngineError::Input(format!(
                    "ControlNet gives {} down residuals, the UNet has {} skip states",
                    r.down_block_res_samples.len(),
                    skips.len()
                )));
            }
            let _p = crate::profile::scope(crate::profile::Op::Elementwise);
            for (skip, res) in skips.iter_mut().zip(&r.down_block_res_samples) {
                *skip = add_residual(skip, res)?;
            }
            if how == ControlResiduals::Original {
                // The last skip state is the mid block's input itself in the original, so the
                // in-place addition reaches the mid block too.
                if let Some(last) = skips.last() {
                    h = last.clone();
                }
            }
        }
        h = self.mid_block.forward(&h, &temb, &context, layout)?;
        if let Some((r, _)) = residuals {
            let _p = crate::profile::scope(crate::profile::Op::Elementwise);
            h = add_residual(&h, &r.mid_block_res_sample)?;
        }
        for block in &self.up_blocks {
            let n = block.num_skips();
            if skips.len() < n {
                // Down and up blocks are built from the same block counts, so the up blocks take
                // back exactly the states the down blocks pushed: running short is a bug.
                return Err(EngineError::Internal(format!(
                    "a UNet up block needs {n} skip states but only {} remain",
                    skips.len()
                )));
            }
            let these = skips.split_off(skips.len() - n);
            let size = match skips.last() {
                Some(s) => Some((s.dim(2)?, s.dim(3)?)),
                None => None,
            };
            h = block.forward(&h, &these, &temb, &context, size, layout)?;
        }
        // GroupNorm and the SiLU after it in one pass, as in the ResNet blocks.
        let h = self
            .conv_norm_out
            .forward_frames_silu(&h, layout.norm_frames)?;
        Ok(self.conv_out.forward(&h)?)
    }
}

/// `a + r`, with a shape check that names both shapes.
fn add_residual(a: &Tensor, r: &Tensor) -> Result<Tensor> {
    if a.dims() != r.dims() {
        return Err(EngineError::Input(format!(
            "ControlNet residual of shape {:?} does not match the UNet state {:?}",
            r.dims(),
            a.dims()
        )));
    }
    Ok((a + r.to_dtype(a.dtype())?)?)
}
