//! GroupNorm whose statistics can span several consecutive batch entries (the frames of a window).
//!
//! diffusers applies `torch.nn.GroupNorm` per image; the inflated 3D UNet of Make-Your-Anchor applies
//! the same module to the 5-D tensor `(b, c, f, h, w)`, so each (batch, group) statistic is taken
//! over `(c/G, f, h, w)`: jointly over all frames of the window. With `frames = 1`
//! this is the plain 2D GroupNorm.
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine=True)`; keys `weight`, `bias`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (both `[num_channels]`).
    pub fn new(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "GroupNorm at {}: {num_channels} channels are not divisible into {num_groups} groups",
                vb.prefix()
            );
        }
        let weight = vb.get(num_channels, "weight")?;
        let bias = vb.get(num_channels, "bias")?;
        Ok(Self {
            weight,
            bias,
            num_groups,
            eps,
        })
    }

    /// Normalises `x: [B, C, H, W]`; statistics are shared by each run of `frames` consecutive
    /// batch entries (`B` must be a multiple of `frames`). Computed in f32 (two-pass variance).
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if frames == 0 || !b.is_multiple_of(frames) {
            candle_core::bail!(
                "GroupNorm: batch {b} is not a whole number of {frames}-frame windows"
            );
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let g = self.num_groups;
        let cg = c / g;
        let windows = b / frames;
        // [windows, frames, groups, elements]; reduce over frames (1) and elements (3).
        let xg = xf.reshape((windows, frames, g, cg * h * w))?;
        let count = (frames * cg * h * w) as f64;
        let mean = (xg.sum_keepdim(3)?.sum_keepdim(1)? / count)?;
        let var = (xg
            .broadcast_sub(&mean)?
            .sqr()?
            .sum_keepdim(3)?
            .sum_keepdim(1)?
            / count)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        // Like torch's kernel: y = x·scale + shift with per-(window, channel) scale = γ/σ and
        // shift = β − μ·scale, so only two full-size temporaries exist.
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            t.reshape((windows, 1, g, 1))?
                .broadcast_as((windows, 1, g, cg))?
                .reshape((windows, 1, c, 1))
        };
        let gamma = self.weight.to_dtype(DType::F32)?.reshape((1, 1, c, 1))?;
        let beta = self.bias.to_dtype(DType::F32)?.reshape((1, 1, c, 1))?;
        let scale = per_channel(&inv_std)?.broadcast_mul(&gamma)?;
        let shift = beta.broadcast_sub(&per_channel(&mean)?.mul(&scale)?)?;
        xf.reshape((windows, frames, c, h * w))?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?
            .reshape((b, c, h, w))?
            .to_dtype(dtype)
    }
}
