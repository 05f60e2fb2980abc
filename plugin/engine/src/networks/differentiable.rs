//! Plain-candle-op versions of the few inference kernels that have no backward pass, used only
//! when a gradient is needed (training, issue 6).
//!
//! Inference keeps its fast kernels: the fused CPU attention (`attention_cpu`), candle's
//! `softmax_last_dim` and its fused `layer_norm` are custom ops without `bwd`, so autograd through
//! them fails with "backward not supported". A tensor that depends on a trainable `Var` records its
//! ops (`Tensor::track_op`); weights loaded from a file do not. [`needs_grad`] uses that to send
//! training through the differentiable ops below and inference through the kernels, so the
//! inference path and its parity tests are untouched.
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{LayerNorm, Module};

/// True when any of `ts` records its ops for backpropagation (it depends on a trainable `Var`).
pub fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Row softmax over the last dimension: candle's fused kernel, or the plain-op form (max, exp,
/// sum, divide) when `x` needs a gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if needs_grad(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `ln.forward(x)`, through plain ops (mean, centred second moment, affine) in f32 when a
/// gradient is needed.
pub fn layer_norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let bias = ln.bias();
    let mut all = vec![x, ln.weight()];
    if let Some(b) = bias {
        all.push(b);
    }
    if !needs_grad(&all) {
        return ln.forward(x);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let n = xf.dim(D::Minus1)? as f64;
    let mean = (xf.sum_keepdim(D::Minus1)? / n)?;
    let centred = xf.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    let normed = centred.broadcast_div(&(var + ln.eps())?.sqrt()?)?;
    let y = normed.broadcast_mul(&ln.weight().to_dtype(DType::F32)?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    y.to_dtype(dtype)
}

/// `softmax(q kᵀ · scale) v` with the whole score matrix, in f32, through differentiable ops.
///
/// Memory grows with `Lq · Lk` per head: fine for training per frame (4 096 tokens at 512²
/// is 64 MiB of scores per head in f32), not for inference over full windows.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let f32s = |t: &Tensor| t.to_dtype(DType::F32);
    let scores = (f32s(q)?.matmul(&f32s(k)?.t()?)? * scale)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs.matmul(&f32s(v)?)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The plain-op forms equal the kernels, and a gradient flows through them where the
    /// kernels would fail.
    #[test]
    fn plain_ops_match_kernels_and_differentiate() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 30, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 30, 8), &dev)?;
        let fused = super::super::attention::attention(&q, &k, &v, 0.35)?;
        let plain = attention(&q, &k, &v, 0.35)?;
        assert!(max_abs(&fused, &plain)? < 1e-5);

        let ln = candle_nn::LayerNorm::new(
            Tensor::randn(1f32, 0.1, 8, &dev)?,
            Tensor::randn(0f32, 0.1, 8, &dev)?,
            1e-5,
        );
        let x = Tensor::randn(0f32, 2.0, (3, 5, 8), &dev)?;
        let kernel = ln.forward(&x)?;
        let xv = Var::from_tensor(&x)?;
        let plain = layer_norm(&ln, xv.as_tensor())?;
        assert!(max_abs(&kernel, &plain)? < 1e-5);

        // d/dq of sum(attention) through the training path exists and is finite.
        let qv = Var::from_tensor(&q)?;
        let out = super::super::attention::attention(qv.as_tensor(), &k, &v, 0.35)?;
        let sm = softmax_last_dim(&out)?;
        let grads = (sm.sqr()?.sum_all()? + plain.sum_all()?)?.backward()?;
        let gq = grads
            .get(qv.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient for q".into()))?;
        assert_eq!(gq.dims(), q.dims());
        let s = gq.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert!(s.is_finite() && s > 0.0, "gradient sum {s}");
        assert!(grads.get(xv.as_tensor()).is_some());
        Ok(())
    }
}
