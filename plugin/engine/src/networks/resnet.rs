//! diffusers `ResnetBlock2D` (default time-embedding norm), `Downsample2D` and `Upsample2D`.
//!
//! In a window the two GroupNorms of a ResNet block take statistics over all frames of the
//! window; convolutions and resampling stay per frame.
use super::conv::{Conv2d, Conv2dConfig};
use super::linear::{self, Linear};
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

use super::group_norm::GroupNorm;
use crate::profile::{self, Op};

/// `k×k` convolution with "same" padding and bias.
pub(crate) fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    super::conv::conv2d(cin, cout, k, cfg, vb)
}

/// `ResnetBlock2D`: `norm1 → SiLU → conv1 → + time_emb_proj(SiLU(temb)) → norm2 → SiLU → conv2`,
/// plus the (1×1 `conv_shortcut` when channels change) skip, divided by `output_scale_factor`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Keys `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, and `conv_shortcut` if `cin != cout`.
    pub fn new(
        cin: usize,
        cout: usize,
        temb_channels: usize,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv_shortcut = if cin != cout {
            Some(super::conv::conv2d(
                cin,
                cout,
                1,
                Conv2dConfig::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, 1, vb.pp("conv1"))?,
            time_emb_proj: linear::linear(temb_channels, cout, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor,
        })
    }

    /// `x: [B, C, H, W]`, `temb: [B, T]`; GroupNorm statistics shared by runs of `norm_frames` entries.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, norm_frames: usize) -> Result<Tensor> {
        // `h` is reassigned (not shadowed) so that each full-size intermediate is freed at once.
        let t = profile::time(Op::Activation, || temb.silu())?;
        let t = profile::time(Op::Matmul, || self.time_emb_proj.forward(&t))?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        // GroupNorm and the SiLU after it in one pass (`silu(norm(x))`, as diffusers computes).
        let mut h = self.norm1.forward_frames_silu(x, norm_frames)?;
        h = self.conv1.forward(&h)?;
        h = profile::time(Op::Elementwise, || h.broadcast_add(&t))?;
        h = self.norm2.forward_frames_silu(&h, norm_frames)?;
        h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let _p = profile::scope(Op::Elementwise);
        let out = super::elementwise::add(&skip, &h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// `Downsample2D` with a conv: 3×3, stride 2, `padding` (0 means pad right/bottom by one first).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    /// Key `conv`.
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: super::conv::conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
            padding,
        })
    }

    /// Per frame.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let x = profile::time(Op::Resample, || {
                x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)
            })?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D` with a conv: nearest ×2 (or to the skip connection's size), then 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Key `conv`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 1, vb.pp("conv"))?,
        })
    }

    /// Per frame; `size` is the target `(h, w)` (torch nearest: source index `floor(i·in/out)`).
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        let up = profile::time(Op::Resample, || x.upsample_nearest2d(th, tw))?;
        self.conv.forward(&up)
    }
}
