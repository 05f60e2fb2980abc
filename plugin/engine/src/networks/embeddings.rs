//! Timestep embeddings: diffusers `Timesteps` (sinusoidal) and `TimestepEmbedding` (linear → SiLU → linear).
//!
//! As diffusers' `get_timestep_embedding`: `exp(-ln(1e4)·i/(half - freq_shift))`, output `[cos | sin]` when `flip_sin_to_cos`.
//! The arithmetic is done in f32 in the same order as `get_timestep_embedding`, so the phases
//! (up to ~1000 rad) round like the reference.
use super::linear::{self, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// Sinusoidal embedding of one timestep, shape `[dim]`, f32.
pub fn timestep_sinusoid(
    timestep: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let t = timestep as f32;
    let phases: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (neg_log_period * i as f32) / denom;
            t * exponent.exp()
        })
        .collect();
    let sin = phases.iter().map(|p| p.sin());
    let cos = phases.iter().map(|p| p.cos());
    let mut values: Vec<f32> = if flip_sin_to_cos {
        cos.chain(sin).collect()
    } else {
        sin.chain(cos).collect()
    };
    // Odd widths are zero-padded at the end, as in diffusers.
    values.resize(dim, 0.0);
    Tensor::from_vec(values, dim, device)
}

/// `TimestepEmbedding`: `linear_1` → SiLU → `linear_2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `in_channels` → `time_embed_dim` → `time_embed_dim`.
    pub fn new(in_channels: usize, time_embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear::linear(in_channels, time_embed_dim, vb.pp("linear_1"))?,
            linear_2: linear::linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?,
        })
    }

    /// `x: [B, in_channels]` → `[B, time_embed_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// diffusers `Timesteps`: the sinusoid settings (no weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timesteps {
    /// Embedding width (`block_out_channels[0]`).
    pub num_channels: usize,
    /// `[cos | sin]` instead of `[sin | cos]`.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` (`freq_shift` in the config).
    pub freq_shift: f64,
}

impl Timesteps {
    /// The sinusoid of `timestep`, repeated for `batch` rows, in `dtype`: `[batch, num_channels]`.
    pub fn forward(
        &self,
        timestep: f64,
        batch: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        timestep_sinusoid(
            timestep,
            self.num_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
            device,
        )?
        .to_dtype(dtype)?
        .unsqueeze(0)?
        .broadcast_as((batch, self.num_channels))?
        .contiguous()
    }

    /// One sinusoid row per batch entry, `[timesteps.len(), num_channels]`: training draws a
    /// timestep per sample.
    pub fn forward_each(&self, timesteps: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
        let rows = timesteps
            .iter()
            .map(|&t| {
                timestep_sinusoid(
                    t,
                    self.num_channels,
                    self.flip_sin_to_cos,
                    self.freq_shift,
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)?.to_dtype(dtype)
    }
}
