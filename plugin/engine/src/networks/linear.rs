//! `Linear` for the networks: inside a CPU bf16 scope ([`super::gemm_bf16::scope`]) one bf16
//! GEMM with f32 accumulation against a copy of the weight packed once, at its first use, for the
//! processor's bf16 dot products; in f32 on the CPU the threaded GEMM of
//! [`super::elementwise::linear`] (an AVX-512 kernel, or the `gemm` crate); elsewhere (other devices and dtypes, training) candle's
//! module.
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};
use std::sync::OnceLock;

use super::gemm_bf16;

/// `torch.nn.Linear` (keys `weight` `[out, in]`, `bias` `[out]`).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// The weight as the bf16 GEMM's right operand, made at the first bf16 forward.
    packed: std::sync::Arc<OnceLock<gemm_bf16::Packed>>,
}

/// Loads a linear layer with a bias, like `candle_nn::linear`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::from(candle_nn::linear(in_dim, out_dim, vb)?))
}

/// Loads a linear layer without a bias, like `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::from(candle_nn::linear_no_bias(
        in_dim, out_dim, vb,
    )?))
}

impl From<candle_nn::Linear> for Linear {
    fn from(inner: candle_nn::Linear) -> Self {
        Self {
            inner,
            packed: Default::default(),
        }
    }
}

impl Linear {
    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.inner.weight(), self.inner.bias());
        if let Some(y) = gemm_bf16::linear(x, w, b, &self.packed)? {
            return Ok(y);
        }
        if let Some(y) = super::elementwise::linear(x, w, b)? {
            return Ok(y);
        }
        self.inner.forward(x)
    }
}
