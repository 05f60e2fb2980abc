//! The UNet's down, mid and up blocks (`CrossAttnDownBlock2D`/`DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D`), shared by the UNet and the
//! ControlNet, and the frame layout of the inflated 3D mode.
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer::{Transformer2DModel, TransformerSpec};
use crate::profile::{self, Op};

/// How the batch dimension is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    /// Every batch entry is an independent image (plain diffusers 2D).
    PerFrame,
    /// The batch entries are the frames of one window: ResNet GroupNorms and `conv_norm_out`
    /// take statistics over all of them, and (UNet only) `attn1` attends over all their tokens.
    Window,
    /// The batch holds this many windows of equal length one after the other (e.g. the CFG
    /// uncond and cond copies of one window); each window is handled as in [`Temporal::Window`]
    /// and windows never mix.
    Windows(usize),
}

/// Runs of consecutive batch entries that share GroupNorm statistics / self-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLayout {
    /// Entries sharing ResNet GroupNorm (and `conv_norm_out`) statistics.
    pub norm_frames: usize,
    /// Entries attending jointly in `attn1`.
    pub attn_frames: usize,
}

impl FrameLayout {
    /// The layout for `batch` entries; `joint_attention` is false for the ControlNet, whose
    /// self-attention stays per frame even in a window.
    pub fn new(mode: Temporal, batch: usize, joint_attention: bool) -> Result<Self> {
        let frames = match mode {
            Temporal::PerFrame => 1,
            Temporal::Window => batch,
            Temporal::Windows(n) if n > 0 && batch.is_multiple_of(n) => batch / n,
            Temporal::Windows(n) => candle_core::bail!(
                "a batch of {batch} frames cannot be split into {n} windows of equal length"
            ),
        };
        Ok(Self {
            norm_frames: frames,
            attn_frames: if joint_attention { frames } else { 1 },
        })
    }
}

/// Settings every ResNet of a network shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ResnetCommon {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// A down block as planned from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DownBlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    /// `Some` for `CrossAttnDownBlock2D`, `None` for `DownBlock2D`.
    pub transformer: Option<TransformerSpec>,
    pub add_downsample: bool,
    pub downsample_padding: usize,
}

/// `CrossAttnDownBlock2D` / `DownBlock2D`: keys `resnets.{j}`, `attentions.{j}`, `downsamplers.0`.
#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsamplers: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(spec: &DownBlockSpec, common: &ResnetCommon, vb: VarBuilder) -> Result<Self> {
        let mut resnets = Vec::with_capacity(spec.num_layers);
        let mut attentions = Vec::new();
        for j in 0..spec.num_layers {
            let cin = if j == 0 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                cin,
                spec.out_channels,
                common.temb_channels,
                common.groups,
                common.eps,
                1.0,
                vb.pp("resnets").pp(j),
            )?);
            if let Some(t) = &spec.transformer {
                attentions.push(Transformer2DModel::new(
                    t,
                    spec.out_channels,
                    common.groups,
                    vb.pp("attentions").pp(j),
                )?);
            }
        }
        let downsamplers = if spec.add_downsample {
            Some(Downsample2D::new(
                spec.out_channels,
                spec.downsample_padding,
                vb.pp("downsamplers").pp(0),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsamplers,
        })
    }

    /// Returns the block output and the skip states it contributes (one per layer, plus the
    /// downsampled state).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        layout: FrameLayout,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb, layout.norm_frames)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, layout.attn_frames)?;
            }
            states.push(h.clone());
        }
        if let Some(down) = &self.downsamplers {
            h = down.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UNetMidBlock2DCrossAttn`: `resnets.0`, then (`attentions.{j}`, `resnets.{j+1}`) pairs.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn new(
        channels: usize,
        transformer: &TransformerSpec,
        output_scale_factor: f64,
        common: &ResnetCommon,
        vb: VarBuilder,
    ) -> Result<Self> {
        // diffusers builds one attention/resnet pair (num_layers = 1) for this block.
        let resnet = |j: usize| {
            ResnetBlock2D::new(
                channels,
                channels,
                common.temb_channels,
                common.groups,
                common.eps,
                output_scale_factor,
                vb.pp("resnets").pp(j),
            )
        };
        Ok(Self {
            resnets: vec![resnet(0)?, resnet(1)?],
            attentions: vec![Transformer2DModel::new(
                transformer,
                channels,
                common.groups,
                vb.pp("attentions").pp(0),
            )?],
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        layout: FrameLayout,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            if j > 0 {
                if let Some(attn) = self.attentions.get(j - 1) {
                    h = attn.forward(&h, context, layout.attn_frames)?;
                }
            }
            h = resnet.forward(&h, temb, layout.norm_frames)?;
        }
        Ok(h)
    }
}

/// An up block as planned from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UpBlockSpec {
    /// Channels of the skip state from the last layer (the down block's input width).
    pub in_channels: usize,
    /// Channels coming from the previous up block (or the mid block).
    pub prev_output_channel: usize,
    pub out_channels: usize,
    /// `layers_per_block + 1`.
    pub num_layers: usize,
    /// `Some` for `CrossAttnUpBlock2D`, `None` for `UpBlock2D`.
    pub transformer: Option<TransformerSpec>,
    pub add_upsample: bool,
}

/// `CrossAttnUpBlock2D` / `UpBlock2D`: keys `resnets.{j}`, `attentions.{j}`, `upsamplers.0`.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsamplers: Option<Upsample2D>,
}

impl UpBlock {
    pub fn new(spec: &UpBlockSpec, common: &ResnetCommon, vb: VarBuilder) -> Result<Self> {
        let mut resnets = Vec::with_capacity(spec.num_layers);
        let mut attentions = Vec::new();
        for j in 0..spec.num_layers {
            let skip = if j + 1 == spec.num_layers {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let cin = if j == 0 {
                spec.prev_output_channel
            } else {
                spec.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                cin + skip,
                spec.out_channels,
                common.temb_channels,
                common.groups,
                common.eps,
                1.0,
                vb.pp("resnets").pp(j),
            )?);
            if let Some(t) = &spec.transformer {
                attentions.push(Transformer2DModel::new(
                    t,
                    spec.out_channels,
                    common.groups,
                    vb.pp("attentions").pp(j),
                )?);
            }
        }
        let upsamplers = if spec.add_upsample {
            Some(Upsample2D::new(
                spec.out_channels,
                vb.pp("upsamplers").pp(0),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsamplers,
        })
    }

    /// Number of skip states this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip states in down order; they are consumed from the last.
    /// `upsample_size` is the spatial size of the next skip state (for odd sizes).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        layout: FrameLayout,
    ) -> Result<Tensor> {
        if skips.len() != self.resnets.len() {
            candle_core::bail!(
                "up block expects {} skip states, got {}",
                self.resnets.len(),
                skips.len()
            );
        }
        let mut h = x.clone();
        for (j, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = profile::time(Op::Elementwise, || Tensor::cat(&[&h, skip], 1))?;
            h = resnet.forward(&h, temb, layout.norm_frames)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, layout.attn_frames)?;
            }
        }
        match &self.upsamplers {
            Some(up) => up.forward(&h, upsample_size),
            None => Ok(h),
        }
    }
}
