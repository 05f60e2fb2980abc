//! Scaled dot-product attention that never materialises the full score matrix, and diffusers'
//! `Attention` module (`to_q`, `to_k`, `to_v`, `to_out.0`) built on it.
//!
//! Full-frame self-attention over a 16-frame window at 64² latents is 65,536 tokens:
//! a naive score matrix per head would be 16 GiB. [`attention`] never builds it:
//! - on the CPU, a fused tiled kernel (`attention_cpu`): 256 query rows × 1024 key rows per tile,
//!   two small GEMMs per tile and an online (running max / running sum) softmax, tiles spread over
//!   threads; about 2× faster than the blocked path below because scores stay in cache;
//! - elsewhere (CUDA), [`blocked_attention`]: query blocks of up to [`QUERY_BLOCK_ROWS`] rows against
//!   key blocks sized by [`SCORE_BLOCK_ELEMENTS`], each a batched candle GEMM, with the same online
//!   softmax. [`fused_attention`] is the hook where a CUDA flash kernel would plug in.
//!
//! Both are exact up to float rounding (tested against an f64 reference). Setting the environment
//! variable `MYA_ATTENTION_BLOCKED` forces the blocked path on the CPU too (for benchmarks).
use super::linear::{self, Linear};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Module, VarBuilder};

use super::attention_cpu;
use crate::profile::{self, Op};

/// Query rows per block (GEMM-friendly, 512–1024 recommended).
pub const QUERY_BLOCK_ROWS: usize = 1024;

/// Upper bound on the elements of one score block `[batch·heads, query rows, key rows]`
/// (2^24 f32 = 64 MiB); the key block is sized to stay under it.
pub const SCORE_BLOCK_ELEMENTS: usize = 1 << 24;

/// Smallest key block: below this the GEMMs get too thin to be efficient.
const MIN_KEY_BLOCK_ROWS: usize = 512;

/// `softmax(q kᵀ · scale) v` for `q: [N, Lq, D]`, `k, v: [N, Lk, D]` (N = batch × heads),
/// returning `[N, Lq, D]` in the dtype of `q`.
///
/// Exact up to float rounding. Uses [`fused_attention`] where it applies (the CPU), else
/// [`blocked_attention`] with the default block sizes.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let _p = profile::scope(Op::Attention);
    // Training: the kernels below have no backward pass (see `differentiable`).
    if super::differentiable::needs_grad(&[q, k, v]) {
        return super::differentiable::attention(q, k, v, scale);
    }
    if let Some(out) = fused_attention(q, k, v, scale)? {
        return Ok(out);
    }
    let (n, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let q_rows = QUERY_BLOCK_ROWS.min(lq).max(1);
    let k_rows = (SCORE_BLOCK_ELEMENTS / (n * q_rows).max(1)).max(MIN_KEY_BLOCK_ROWS);
    blocked_attention(q, k, v, scale, q_rows, k_rows.min(lk).max(1))
}

/// Fused attention where one is available; `None` sends the caller to the blocked GEMM path.
///
/// On the CPU (f32) this is a tiled kernel ([`attention_cpu`]): 256 query rows × 1024 key rows at
/// a time, scores kept in cache, the same online softmax as [`blocked_attention`]. A CUDA flash
/// kernel (candle-flash-attn) would go here behind its own cargo feature; none is compiled in,
/// so CUDA takes the blocked path.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if let Some(out) = super::gemm_bf16::attention(q, k, v, scale)? {
        return Ok(Some(out));
    }
    if q.device().is_cpu() && std::env::var_os("MYA_ATTENTION_BLOCKED").is_none() {
        let dtype = q.dtype();
        let f32s = |t: &Tensor| t.to_dtype(DType::F32);
        let out = attention_cpu::fused_attention(&f32s(q)?, &f32s(k)?, &f32s(v)?, scale)?;
        return Ok(Some(out.to_dtype(dtype)?));
    }
    Ok(None)
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
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?;
    let v = v.to_dtype(DType::F32)?;
    // The CPU kernels apply the scale inside the exponential (`exp((s - max)·scale)`, exact since
    // scale > 0); elsewhere q is pre-scaled.
    let kernels = Kernels::for_tensor(&q, scale);
    let q = if kernels.fused_scale() {
        q
    } else {
        (q * scale)?
    };
    // On the CPU, key/value blocks are strided views (candle's CPU GEMM takes a transposed,
    // narrowed rhs as is, saving two copies of K and V); other backends get contiguous blocks.
    let on_cpu = q.device().is_cpu();
    let blocks: Vec<(Tensor, Tensor)> = (0..lk)
        .step_by(k_rows)
        .map(|start| {
            let len = k_rows.min(lk - start);
            let (kb_t, vb) = (k.narrow(1, start, len)?.t()?, v.narrow(1, start, len)?);
            if on_cpu {
                Ok((kb_t, vb))
            } else {
                Ok((kb_t.contiguous()?, vb.contiguous()?))
            }
        })
        .collect::<Result<_>>()?;
    let out = Tensor::zeros((n, lq, dv), DType::F32, q.device())?;
    for start in (0..lq).step_by(q_rows) {
        let len = q_rows.min(lq - start);
        let qb = if on_cpu {
            q.narrow(1, start, len)?
        } else {
            q.narrow(1, start, len)?.contiguous()?
        };
        let block = match blocks.as_slice() {
            [(kb_t, vb)] => kernels.softmax(&qb.matmul(kb_t)?)?.matmul(vb)?,
            _ => online_softmax_block(&qb, &blocks, dv, &kernels)?,
        };
        out.slice_set(&block, 1, start)?;
    }
    out.to_dtype(dtype)
}

/// One query block against all key blocks, keeping a running row max `m`, running denominator `l`
/// and running numerator `acc` (rescaled by `exp(m_old - m_new)` whenever the max grows).
fn online_softmax_block(
    qb: &Tensor,
    blocks: &[(Tensor, Tensor)],
    dv: usize,
    kernels: &Kernels,
) -> Result<Tensor> {
    let (n, rows, _) = qb.dims3()?;
    let mut m: Option<Tensor> = None;
    let mut l = Tensor::zeros((n, rows, 1), DType::F32, qb.device())?;
    let mut acc = Tensor::zeros((n, rows, dv), DType::F32, qb.device())?;
    for (kb_t, vb) in blocks {
        let s = qb.matmul(kb_t)?;
        let block_max = s.max_keepdim(D::Minus1)?;
        let m_new = match &m {
            Some(m_old) => m_old.maximum(&block_max)?,
            None => block_max,
        };
        let p = kernels.exp_shifted(&s, &m_new)?;
        drop(s);
        let p_sum = p.sum_keepdim(D::Minus1)?;
        let pv = p.matmul(vb)?;
        match &m {
            Some(m_old) => {
                let correction = kernels.correction(m_old, &m_new)?;
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

/// The softmax pieces: vectorised CPU kernels with the scale folded in (f32 on the CPU), or
/// candle's ops on pre-scaled scores elsewhere.
struct Kernels {
    /// `Some(scale)` when the CPU kernels are used.
    cpu_scale: Option<f32>,
}

impl Kernels {
    fn for_tensor(t: &Tensor, scale: f64) -> Self {
        Self {
            cpu_scale: attention_cpu::applies(t).then_some(scale as f32),
        }
    }

    fn fused_scale(&self) -> bool {
        self.cpu_scale.is_some()
    }

    /// Row softmax of the (unscaled on CPU, pre-scaled elsewhere) scores.
    fn softmax(&self, s: &Tensor) -> Result<Tensor> {
        match self.cpu_scale {
            Some(scale) => attention_cpu::softmax_last_dim(s, scale),
            None => candle_nn::ops::softmax_last_dim(s),
        }
    }

    /// `exp((m_old - m_new)·scale)`: the rescaling of the running sums (small; exact `exp`, since
    /// its error would compound over the key blocks).
    fn correction(&self, m_old: &Tensor, m_new: &Tensor) -> Result<Tensor> {
        ((m_old - m_new)? * f64::from(self.cpu_scale.unwrap_or(1.0)))?.exp()
    }

    /// `exp((s - m)·scale)` with one shift per row.
    fn exp_shifted(&self, s: &Tensor, m: &Tensor) -> Result<Tensor> {
        match self.cpu_scale {
            Some(scale) => attention_cpu::exp_shifted(s, m, scale),
            None => s.broadcast_sub(m)?.exp(),
        }
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
            to_q: linear::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            dim_head,
        })
    }

    /// `x: [B, N, C]`. Self-attention when `context` is `None`, in which case each run of `frames`
    /// consecutive batch entries attends jointly over its `frames · N` tokens (ControlVideo's
    /// fully cross-frame attention; `frames = 1` is per image). Cross-attention
    /// (`context: [B, M, C']`) is always per batch entry.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, frames: usize) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (kv_source, groups, tokens) = match context {
            Some(ctx) => (ctx, b, n),
            None => {
                if frames == 0 || !b.is_multiple_of(frames) {
                    candle_core::bail!(
                        "attention: batch {b} is not a whole number of {frames}-frame windows"
                    );
                }
                (x, b / frames, frames * n)
            }
        };
        // "(b f) d c -> b (f d) c": frames are consecutive in the batch, so a reshape concatenates
        // them. Each projection is split into heads at once so that only one copy stays alive.
        let kv_tokens = kv_source.dim(1)? * (b / groups);
        let linear = |l: &Linear, t: &Tensor| profile::time(Op::Matmul, || l.forward(t));
        let q = self.split_heads(&linear(&self.to_q, x)?, groups, tokens)?;
        let k = self.split_heads(&linear(&self.to_k, kv_source)?, groups, kv_tokens)?;
        let v = self.split_heads(&linear(&self.to_v, kv_source)?, groups, kv_tokens)?;
        let out = attention(&q, &k, &v, 1.0 / (self.dim_head as f64).sqrt())?;
        drop((q, k, v));
        let out = profile::time(Op::Elementwise, || {
            out.reshape((groups, self.heads, tokens, self.dim_head))?
                .transpose(1, 2)?
                .reshape((b, n, self.heads * self.dim_head))
        })?;
        linear(&self.to_out, &out)
    }

    /// `[.., inner]` → `[groups · heads, tokens, dim_head]`.
    fn split_heads(&self, x: &Tensor, groups: usize, tokens: usize) -> Result<Tensor> {
        let _p = profile::scope(Op::Elementwise);
        x.reshape((groups, tokens, self.heads, self.dim_head))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((groups * self.heads, tokens, self.dim_head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn blocked_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        // Large logits (std ≈ 9 after scaling) make the softmax peaky: a hard case for rounding.
        let q = (Tensor::randn(0f32, 1.0, (3, 300, 16), &dev)? * 3.0)?;
        let k = (Tensor::randn(0f32, 1.0, (3, 517, 16), &dev)? * 3.0)?;
        let v = Tensor::randn(0f32, 1.0, (3, 517, 16), &dev)?;
        let scale = 0.25;
        // Reference in f64; the f32 naive path shows what plain float rounding costs.
        let f64s = |t: &Tensor| t.to_dtype(DType::F64);
        let reference =
            naive_attention(&f64s(&q)?, &f64s(&k)?, &f64s(&v)?, scale)?.to_dtype(DType::F32)?;
        let naive_err = max_abs(&naive_attention(&q, &k, &v, scale)?, &reference)?;
        let bound = (4.0 * naive_err).max(2e-6);
        // Uneven blocks in both directions, a single key block, and the default sizing.
        for (qr, kr) in [(64, 100), (128, 517), (300, 16), (7, 33)] {
            let err = max_abs(&blocked_attention(&q, &k, &v, scale, qr, kr)?, &reference)?;
            println!("blocks ({qr},{kr}): {err:e} (naive f32: {naive_err:e})");
            assert!(
                err <= bound,
                "blocks ({qr},{kr}): max abs error {err} > {bound}"
            );
        }
        let err = max_abs(&attention(&q, &k, &v, scale)?, &reference)?;
        assert!(err <= bound, "default path: max abs error {err} > {bound}");
        // The fused CPU kernel, with key lengths below, at and above its 512-row tile.
        for lk in [50, 512, 517, 1300] {
            let k = (Tensor::randn(0f32, 1.0, (3, lk, 16), &dev)? * 3.0)?;
            let v = Tensor::randn(0f32, 1.0, (3, lk, 24), &dev)?;
            let reference =
                naive_attention(&f64s(&q)?, &f64s(&k)?, &f64s(&v)?, scale)?.to_dtype(DType::F32)?;
            let naive_err = max_abs(&naive_attention(&q, &k, &v, scale)?, &reference)?;
            let fused = fused_attention(&q, &k, &v, scale)?
                .ok_or_else(|| candle_core::Error::Msg("no fused CPU kernel".into()))?;
            let err = max_abs(&fused, &reference)?;
            println!("fused, {lk} keys: {err:e} (naive f32: {naive_err:e})");
            assert!(
                err <= (4.0 * naive_err).max(2e-6),
                "fused, {lk} keys: {err}"
            );
        }
        Ok(())
    }
}
