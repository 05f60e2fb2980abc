//! Scaled dot-product attention that never materialises the full score matrix, and diffusers'
//! `Attention` module (`to_q`, `to_k`, `to_v`, `to_out.0`) built on it.
//!
//! Full-frame self-attention over a 16-frame window at 64² latents is 65,536 tokens (spec §2, §7.18):
//! a naive score matrix per head would be 16 GiB. [`attention`] walks query blocks of up to
//! [`QUERY_BLOCK_ROWS`] rows against key blocks with an online (running max / running sum) softmax,
//! each block a GEMM, so memory stays bounded by the block size whatever the sequence length.
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention_cpu;

/// Query rows per block (GEMM-friendly, 512–1024 recommended).
pub const QUERY_BLOCK_ROWS: usize = 1024;

/// Upper bound on the elements of one score block `[batch·heads, query rows, key rows]`
/// (2^25 f32 = 128 MiB); the key block is sized to stay under it.
pub const SCORE_BLOCK_ELEMENTS: usize = 1 << 25;

/// Smallest key block: below this the GEMMs get too thin to be efficient.
const MIN_KEY_BLOCK_ROWS: usize = 512;

/// `softmax(q kᵀ · scale) v` for `q: [N, Lq, D]`, `k, v: [N, Lk, D]` (N = batch × heads),
/// returning `[N, Lq, D]` in the dtype of `q`.
///
/// Exact up to float rounding: keys that fit one block use a plain softmax per query block, longer
/// key sequences an online softmax over key blocks. A fused kernel is used where one is available
/// ([`fused_attention`]); none is compiled in today, so every device takes the blocked path.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some(out) = fused_attention(q, k, v, scale)? {
        return Ok(out);
    }
    let (n, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let q_rows = QUERY_BLOCK_ROWS.min(lq).max(1);
    let k_rows = (SCORE_BLOCK_ELEMENTS / (n * q_rows).max(1)).max(MIN_KEY_BLOCK_ROWS);
    blocked_attention(q, k, v, scale, q_rows, k_rows.min(lk).max(1))
}

/// Hook for a fused (flash) attention kernel on CUDA. Returns `None` where none applies, and the
/// caller falls back to the blocked GEMM path. No fused kernel is compiled in at present.
pub fn fused_attention(
    q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _scale: f64,
) -> Result<Option<Tensor>> {
    match q.device() {
        Device::Cpu => Ok(None),
        // A candle-flash-attn call would go here, behind its own cargo feature.
        _ => Ok(None),
    }
}

/// The blocked path with explicit block sizes (exposed for tests and benchmarks).
pub fn blocked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    q_rows: usize,
    k_rows: usize,
) -> Result<Tensor> {
    let (n, lq, d) = q.dims3()?;
    let (nk, lk, dk) = k.dims3()?;
    let (nv, lv, dv) = v.dims3()?;
    if nk != n || nv != n || dk != d || lv != lk {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not agree",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q_rows == 0 || k_rows == 0 {
        candle_core::bail!("attention: block sizes must be positive ({q_rows}, {k_rows})");
    }
    let dtype = q.dtype();
    // Scores and softmax run in f32 whatever the storage dtype (upcast like diffusers' f16 path).
    let q = (q.to_dtype(DType::F32)? * scale)?;
    let k = k.to_dtype(DType::F32)?;
    let v = v.to_dtype(DType::F32)?;
    let kt: Vec<(Tensor, Tensor)> = (0..lk)
        .step_by(k_rows)
        .map(|start| {
            let len = k_rows.min(lk - start);
            Ok((
                k.narrow(1, start, len)?.t()?.contiguous()?,
                v.narrow(1, start, len)?.contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut outs = Vec::with_capacity(lq.div_ceil(q_rows));
    for start in (0..lq).step_by(q_rows) {
        let len = q_rows.min(lq - start);
        let qb = q.narrow(1, start, len)?.contiguous()?;
        let out = if kt.len() == 1 {
            let (kb_t, vb) = &kt[0];
            let p = softmax_last_dim(&qb.matmul(kb_t)?)?;
            p.matmul(vb)?
        } else {
            online_softmax_block(&qb, &kt, dv)?
        };
        outs.push(out);
    }
    let out = if outs.len() == 1 {
        outs.pop()
            .ok_or_else(|| candle_core::Error::Msg("attention: no block".into()))?
    } else {
        Tensor::cat(&outs, 1)?
    };
    out.to_dtype(dtype)
}

/// One query block against all key blocks, keeping a running row max `m`, running denominator `l`
/// and running numerator `acc` (rescaled by `exp(m_old - m_new)` whenever the max grows).
fn online_softmax_block(qb: &Tensor, kt: &[(Tensor, Tensor)], dv: usize) -> Result<Tensor> {
    let (n, rows, _) = qb.dims3()?;
    let mut m: Option<Tensor> = None;
    let mut l = Tensor::zeros((n, rows, 1), DType::F32, qb.device())?;
    let mut acc = Tensor::zeros((n, rows, dv), DType::F32, qb.device())?;
    for (kb_t, vb) in kt {
        let s = qb.matmul(kb_t)?;
        let block_max = s.max_keepdim(D::Minus1)?;
        let m_new = match &m {
            Some(m_old) => m_old.maximum(&block_max)?,
            None => block_max,
        };
        let p = exp_shifted(&s, &m_new)?;
        let p_sum = p.sum_keepdim(D::Minus1)?;
        let pv = p.matmul(vb)?;
        match &m {
            Some(m_old) => {
                let correction = (m_old - &m_new)?.exp()?;
                l = (l.mul(&correction)? + p_sum)?;
                acc = (acc.broadcast_mul(&correction)? + pv)?;
            }
            None => {
                l = p_sum;
                acc = pv;
            }
        }
        m = Some(m_new);
    }
    acc.broadcast_div(&l)
}

/// Row softmax: the vectorised CPU kernel for f32 on the CPU, candle's elsewhere.
fn softmax_last_dim(s: &Tensor) -> Result<Tensor> {
    if attention_cpu::applies(s) {
        attention_cpu::softmax_last_dim(s)
    } else {
        candle_nn::ops::softmax_last_dim(s)
    }
}

/// `exp(s - m)` with one shift per row.
fn exp_shifted(s: &Tensor, m: &Tensor) -> Result<Tensor> {
    if attention_cpu::applies(s) {
        attention_cpu::exp_shifted(s, m)
    } else {
        s.broadcast_sub(m)?.exp()
    }
}

/// Reference attention that builds the whole score matrix; only for tests on small inputs.
pub fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let s = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax_last_dim(&s)?.matmul(v)
}

/// diffusers `Attention` with the default processor: `to_q/to_k/to_v` without bias, `to_out.0`
/// with bias, `heads` heads of `dim_head`, scale `dim_head^-0.5`.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl Attention {
    /// `query_dim` → `heads · dim_head`; keys/values from `context_dim` (= `query_dim` for self-attention).
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            dim_head,
        })
    }

    /// `x: [B, N, C]`. Self-attention when `context` is `None`, in which case each run of `frames`
    /// consecutive batch entries attends jointly over its `frames · N` tokens (ControlVideo's
    /// fully cross-frame attention, spec §2; `frames = 1` is per image). Cross-attention
    /// (`context: [B, M, C']`) is always per batch entry.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, frames: usize) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let q = self.to_q.forward(x)?;
        let (k, v, groups, tokens) = match context {
            Some(ctx) => (self.to_k.forward(ctx)?, self.to_v.forward(ctx)?, b, n),
            None => {
                if frames == 0 || !b.is_multiple_of(frames) {
                    candle_core::bail!(
                        "attention: batch {b} is not a whole number of {frames}-frame windows"
                    );
                }
                (
                    self.to_k.forward(x)?,
                    self.to_v.forward(x)?,
                    b / frames,
                    frames * n,
                )
            }
        };
        // "(b f) d c -> b (f d) c": frames are consecutive in the batch, so a reshape concatenates them.
        let q = self.split_heads(&q, groups, tokens)?;
        let kv_tokens = k.dim(1)? * (b / groups);
        let k = self.split_heads(&k, groups, kv_tokens)?;
        let v = self.split_heads(&v, groups, kv_tokens)?;
        let out = attention(&q, &k, &v, 1.0 / (self.dim_head as f64).sqrt())?;
        let out = out
            .reshape((groups, self.heads, tokens, self.dim_head))?
            .transpose(1, 2)?
            .reshape((b, n, self.heads * self.dim_head))?;
        self.to_out.forward(&out)
    }

    /// `[.., inner]` → `[groups · heads, tokens, dim_head]`.
    fn split_heads(&self, x: &Tensor, groups: usize, tokens: usize) -> Result<Tensor> {
        x.reshape((groups, tokens, self.heads, self.dim_head))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((groups * self.heads, tokens, self.dim_head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn blocked_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        let q = (Tensor::randn(0f32, 1.0, (3, 300, 16), &dev)? * 3.0)?;
        let k = (Tensor::randn(0f32, 1.0, (3, 517, 16), &dev)? * 3.0)?;
        let v = Tensor::randn(0f32, 1.0, (3, 517, 16), &dev)?;
        let scale = 0.25;
        let reference = naive_attention(&q, &k, &v, scale)?;
        // Uneven blocks in both directions, a single key block, and the default sizing.
        for (qr, kr) in [(64, 100), (128, 517), (300, 16), (7, 33)] {
            let out = blocked_attention(&q, &k, &v, scale, qr, kr)?;
            let err = max_abs(&out, &reference)?;
            assert!(err < 5e-6, "blocks ({qr},{kr}): max abs error {err}");
        }
        let err = max_abs(&attention(&q, &k, &v, scale)?, &reference)?;
        assert!(err < 5e-6, "default blocks: max abs error {err}");
        Ok(())
    }
}
