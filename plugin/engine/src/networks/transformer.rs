//! diffusers `Transformer2DModel` (continuous input) with `BasicTransformerBlock`s and the GEGLU
//! `FeedForward`.
//!
//! In a window only `attn1` of the UNet sees all frames; the transformer's own GroupNorm
//! (`norm`, eps 1e-6), `attn2` (cross-attention to the appearance tokens), the FF and the
//! projections stay per frame. GEGLU uses the exact erf GELU.
use super::conv::{Conv2d, Conv2dConfig};
use super::linear::{self, Linear};
use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};

use super::attention::Attention;
use super::differentiable::layer_norm;
use super::group_norm::GroupNorm;
use crate::profile::{self, Op};

/// What a `Transformer2DModel` needs beyond its channel count (from the UNet/ControlNet config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerSpec {
    /// Number of attention heads (legacy `attention_head_dim`).
    pub heads: usize,
    /// `BasicTransformerBlock`s (`transformer_layers_per_block`).
    pub num_layers: usize,
    /// Width of the encoder hidden states (`cross_attention_dim`).
    pub cross_attention_dim: usize,
    /// Linear instead of 1×1-conv `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
}

/// Rows per feed-forward chunk: bounds the `[rows, 8·C]` GEGLU intermediate (the FF is per token,
/// so chunking is exact).
const FF_CHUNK_ELEMENTS: usize = 1 << 24;

/// `GEGLU`: `proj` to `2·inner`, `hidden · gelu_erf(gate)`.
#[derive(Debug, Clone)]
struct Geglu {
    proj: Linear,
}

impl Module for Geglu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = profile::time(Op::Matmul, || self.proj.forward(x))?;
        let _p = profile::scope(Op::Activation);
        if let Some(y) = super::elementwise::geglu(&h)? {
            return Ok(y);
        }
        let inner = h.dim(candle_core::D::Minus1)? / 2;
        let hidden = h.narrow(candle_core::D::Minus1, 0, inner)?;
        let gate = h.narrow(candle_core::D::Minus1, inner, inner)?;
        hidden.mul(&gate.gelu_erf()?)
    }
}

/// `FeedForward` with GEGLU: keys `net.0.proj` and `net.2` (net.1 is dropout).
#[derive(Debug, Clone)]
struct FeedForward {
    geglu: Geglu,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    fn new(dim: usize, mult: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim * mult;
        let net = vb.pp("net");
        Ok(Self {
            geglu: Geglu {
                proj: linear::linear(dim, inner * 2, net.pp("0").pp("proj"))?,
            },
            out: linear::linear(inner, dim, net.pp("2"))?,
            inner,
        })
    }

    /// `x: [B, N, C]`, processed in row chunks. The rows are flattened to `[B·N, C]` first, so
    /// each projection is one GEMM over all tokens rather than one per batch entry against a
    /// broadcast weight (candle's batched matmul).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let rows = b * n;
        let chunk = (FF_CHUNK_ELEMENTS / (2 * self.inner).max(1)).max(1);
        let out = |t: &Tensor| profile::time(Op::Matmul, || self.out.forward(t));
        let flat = x.reshape((rows, c))?;
        if rows <= chunk {
            return out(&self.geglu.forward(&flat)?)?.reshape((b, n, c));
        }
        let parts = (0..rows)
            .step_by(chunk)
            .map(|start| {
                let len = chunk.min(rows - start);
                out(&self.geglu.forward(&flat.narrow(0, start, len)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        profile::time(Op::Elementwise, || {
            Tensor::cat(&parts, 0)?.reshape((b, n, c))
        })
    }
}

/// `BasicTransformerBlock` (layer_norm type): self-attention, cross-attention, GEGLU FF, each
/// pre-LayerNorm (eps 1e-5) with a residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// `dim = heads · dim_head`; `cross_dim` is the width of the encoder hidden states.
    pub fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(dim, dim, heads, dim_head, vb.pp("attn1"))?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(dim, cross_dim, heads, dim_head, vb.pp("attn2"))?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, 4, vb.pp("ff"))?,
        })
    }

    /// `x: [B, N, C]`, `context: [B, M, C']`; `attn_frames` consecutive entries share `attn1`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, attn_frames: usize) -> Result<Tensor> {
        let ln = |n: &LayerNorm, t: &Tensor| {
            profile::time(Op::LayerNorm, || {
                match super::elementwise::layer_norm(n, t)? {
                    Some(y) => Ok(y),
                    None => layer_norm(n, t),
                }
            })
        };
        let add = |a: Tensor, b: &Tensor| {
            profile::time(Op::Elementwise, || super::elementwise::add(&a, b))
        };
        let mut x = add(
            self.attn1
                .forward(&ln(&self.norm1, x)?, None, attn_frames)?,
            x,
        )?;
        x = add(
            self.attn2
                .forward(&ln(&self.norm2, &x)?, Some(context), 1)?,
            &x,
        )?;
        add(self.ff.forward(&ln(&self.norm3, &x)?)?, &x)
    }
}

/// Input/output projection: 1×1 conv (`use_linear_projection = false`) or linear.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(cin: usize, cout: usize, linear: bool, vb: VarBuilder) -> Result<Self> {
        Ok(if linear {
            Self::Linear(linear::linear(cin, cout, vb)?)
        } else {
            Self::Conv(super::conv::conv2d(
                cin,
                cout,
                1,
                Conv2dConfig::default(),
                vb,
            )?)
        })
    }
}

/// `Transformer2DModel`: `norm` (GroupNorm eps 1e-6, per frame) → `proj_in` → blocks → `proj_out`,
/// plus the input residual.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Built on `in_channels` with `spec.heads` heads of `in_channels / heads` (the UNet blocks
    /// always pass `heads · dim_head = in_channels`; the config check guarantees divisibility).
    pub fn new(
        spec: &TransformerSpec,
        in_channels: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let heads = spec.heads;
        if heads == 0 || !in_channels.is_multiple_of(heads) {
            candle_core::bail!(
                "Transformer2DModel at {}: {in_channels} channels not divisible by {heads} heads",
                vb.prefix()
            );
        }
        let dim_head = in_channels / heads;
        let inner = heads * dim_head;
        let linear = spec.use_linear_projection;
        let blocks = vb.pp("transformer_blocks");
        let transformer_blocks = (0..spec.num_layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    inner,
                    heads,
                    dim_head,
                    spec.cross_attention_dim,
                    blocks.pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(groups, in_channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(in_channels, inner, linear, vb.pp("proj_in"))?,
            transformer_blocks,
            proj_out: Projection::new(inner, in_channels, linear, vb.pp("proj_out"))?,
        })
    }

    /// `x: [B, C, H, W]`, `context: [B, M, C']`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, attn_frames: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = |t: &Tensor| -> Result<Tensor> {
            let _p = profile::scope(Op::Elementwise);
            let ch = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch))
        };
        let linear = |l: &Linear, t: &Tensor| profile::time(Op::Matmul, || l.forward(t));
        let mut hs = {
            let normed = self.norm.forward_frames(x, 1)?;
            match &self.proj_in {
                Projection::Conv(conv) => tokens(&conv.forward(&normed)?)?,
                Projection::Linear(lin) => linear(lin, &tokens(&normed)?)?,
            }
        };
        for block in &self.transformer_blocks {
            hs = block.forward(&hs, context, attn_frames)?;
        }
        let inner = hs.dim(2)?;
        let image = |t: &Tensor, ch: usize| -> Result<Tensor> {
            let _p = profile::scope(Op::Elementwise);
            t.reshape((b, h, w, ch))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&image(&hs, inner)?)?,
            Projection::Linear(lin) => image(&linear(lin, &hs)?, c)?,
        };
        profile::time(Op::Elementwise, || super::elementwise::add(&out, x))
    }
}
