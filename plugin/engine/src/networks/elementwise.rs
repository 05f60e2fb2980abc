//! Fused, threaded CPU kernels for f32 inference: the GEGLU gate (`hidden · gelu_erf(gate)`,
//! Shazeer 2020, arXiv 2002.05202), LayerNorm (Ba et al. 2016, arXiv 1607.06450), linear layers,
//! SiLU, same-shape adds and nearest ×2 upsampling.
//!
//! candle 0.11 runs each of these as one or several single-threaded passes over memory (a strided
//! `narrow` copy, the f64 `erf` or scalar `exp` per element, the product; mean, centring,
//! variance, scaling; a row-major GEMM result plus a separate broadcast bias add), which at the
//! mid model's 8,192-token windows and the VAE's 512² images costs as much as the GEMMs around
//! them. Here each is one pass, split into blocks that the kernels' worker pool
//! ([`super::pool`]) takes in turn; a row's or element's arithmetic never depends on the thread
//! count. The GELU uses a rational approximation of `erf` (absolute error below 5e-7, the form
//! of Eigen's `generic_fast_erf_float`: an odd degree-13 numerator over an even degree-8
//! denominator on `[-4, 4]`, where f32 `erf` saturates), which vectorises unlike the f64 `erf`.
//!
//! The kernels return `None` (or fall back to candle) where they do not apply: other devices or
//! dtypes, strided inputs, tensors that need a gradient.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::cpu::{contiguous_f32, simd_level, SharedMut};
use super::differentiable::needs_grad;

/// Elements below which a kernel runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// `erf(x)` in f32, absolute error below 5e-7 (see the module documentation).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `out[j] = hidden[j] · gelu_erf(gate[j])` for one row.
#[inline(always)]
fn geglu_row(hidden: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
        *o = h * (0.5 * g * (1.0 + erf_f32(g * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

/// LayerNorm of one row: two-pass mean and variance (16 partial sums, so that the loops
/// vectorise; the order is fixed), then `(x − mean) · rstd · weight + bias`.
#[inline(always)]
fn layer_norm_row(x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len();
    // Generic (not `dyn`) and inlined into the caller's target features, so that each sum
    // vectorises.
    #[inline(always)]
    fn lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        let mut acc = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
            *a += f(v);
        }
        acc.iter().sum()
    }
    let mean = lanes(x, |v| v) / n as f32;
    let var = lanes(x, |v| (v - mean) * (v - mean)) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    match bias {
        Some(b) => {
            for (((o, &v), &w), &bb) in out.iter_mut().zip(x).zip(weight).zip(b) {
                *o = (v - mean) * rstd * w + bb;
            }
        }
        None => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
                *o = (v - mean) * rstd * w;
            }
        }
    }
}

/// The row loops compiled for AVX2 + FMA and for AVX-512, chosen at run time. Rust does not
/// contract `a·b + c` into FMAs, so every build computes the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! row_kernels {
    ($name:ident, $features:literal) => {
        mod $name {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn geglu_rows(h: &[f32], out: &mut [f32], inner: usize) {
                for (row, o) in h.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
                    let (hidden, gate) = row.split_at(inner);
                    super::geglu_row(hidden, gate, o);
                }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn layer_norm_rows(
                x: &[f32],
                weight: &[f32],
                bias: Option<&[f32]>,
                eps: f32,
                out: &mut [f32],
            ) {
                let c = weight.len();
                for (row, o) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                    super::layer_norm_row(row, weight, bias, eps, o);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
row_kernels!(avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
row_kernels!(avx512, "avx512f,avx2,fma");

fn geglu_rows(isa: u8, h: &[f32], out: &mut [f32], inner: usize) {
    match isa {
        // SAFETY: the CPU supports these instructions (`isa`).
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { avx512::geglu_rows(h, out, inner) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { avx2::geglu_rows(h, out, inner) },
        _ => {
            for (row, o) in h.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
                let (hidden, gate) = row.split_at(inner);
                geglu_row(hidden, gate, o);
            }
        }
    }
}

fn layer_norm_rows(isa: u8, x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    match isa {
        // SAFETY: the CPU supports these instructions (`isa`).
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { avx512::layer_norm_rows(x, w, b, eps, out) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { avx2::layer_norm_rows(x, w, b, eps, out) },
        _ => {
            for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
                layer_norm_row(row, w, b, eps, o);
            }
        }
    }
}

/// Runs `f(input rows, output rows)` over `rows` rows (`in_w` and `out_w` floats each) on up to
/// candle's thread count threads. The rows are cut into about 8 blocks per thread that the
/// threads take in turn, so a core slowed by another process takes fewer blocks.
fn for_row_chunks(
    input: &[f32],
    out: &mut [f32],
    rows: usize,
    in_w: usize,
    out_w: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) {
    let threads = if input.len() < PARALLEL_MIN_ELEMENTS {
        1
    } else {
        candle_core::utils::get_num_threads().clamp(1, rows.max(1))
    };
    if threads <= 1 || in_w == 0 || out_w == 0 {
        f(input, out);
        return;
    }
    let per = rows.div_ceil(8 * threads).max(1);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (in_len, out_len) = (input.len(), out.len());
    super::pool::for_each(rows.div_ceil(per), threads, |i| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(rows));
        let src = &input[(r0 * in_w).min(in_len)..(r1 * in_w).min(in_len)];
        let (d0, d1) = ((r0 * out_w).min(out_len), (r1 * out_w).min(out_len));
        // SAFETY: block i owns output rows r0..r1, inside `out`; no other block writes them.
        let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(d0), d1 - d0) };
        f(src, dst);
    });
}

fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
        && !needs_grad(ts)
}

struct GegluCpu;

impl CustomOp1 for GegluCpu {
    fn name(&self) -> &'static str {
        "geglu-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = contiguous_f32(s, l, self.name())?;
        let mut dims = l.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("geglu: scalar input")
        };
        let inner = *last / 2;
        *last = inner;
        let rows = if inner == 0 { 0 } else { h.len() / (2 * inner) };
        let mut out = vec![0f32; rows * inner];
        let isa = simd_level();
        for_row_chunks(h, &mut out, rows, 2 * inner, inner, |src, dst| {
            geglu_rows(isa, src, dst, inner)
        });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `h[..., :n] · gelu_erf(h[..., n:])` for `h: [..., 2n]` (diffusers `GEGLU` after its
/// projection), or `None` where the fused kernel does not apply.
pub fn geglu(h: &Tensor) -> Result<Option<Tensor>> {
    let last = h.dim(candle_core::D::Minus1)?;
    if !applies(&[h]) || !last.is_multiple_of(2) {
        return Ok(None);
    }
    Ok(Some(h.apply_op1_no_bwd(&GegluCpu)?))
}

struct LayerNormCpu {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl CustomOp1 for LayerNormCpu {
    fn name(&self) -> &'static str {
        "layer-norm-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let c = self.weight.len();
        let rows = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        let isa = simd_level();
        let (w, b) = (&self.weight[..], self.bias.as_deref());
        for_row_chunks(x, &mut out, rows, c, c, |src, dst| {
            layer_norm_rows(isa, src, w, b, self.eps, dst)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `candle_nn::LayerNorm` over the last dimension (mean removed, affine), or `None` where the
/// fused kernel does not apply.
pub fn layer_norm(ln: &candle_nn::LayerNorm, x: &Tensor) -> Result<Option<Tensor>> {
    let mut all = vec![x, ln.weight()];
    if let Some(b) = ln.bias() {
        all.push(b);
    }
    let c = ln.weight().elem_count();
    if !ln.remove_mean() || !applies(&all) || x.dim(candle_core::D::Minus1)? != c || c == 0 {
        return Ok(None);
    }
    let op = LayerNormCpu {
        weight: ln.weight().flatten_all()?.to_vec1::<f32>()?,
        bias: ln
            .bias()
            .map(|b| b.flatten_all()?.to_vec1::<f32>())
            .transpose()?,
        eps: ln.eps() as f32,
    };
    Ok(Some(x.apply_op1_no_bwd(&op)?))
}

/// Output columns (tokens) per work item of [`linear`]: fixed, so the split (and the rounding)
/// never depends on the thread count.
const LINEAR_TOKENS: usize = 256;

/// Fewest work items a linear layer is split into (by output features when its tokens make fewer
/// blocks), so that both cores share a short sequence's wide projection.
const LINEAR_MIN_ITEMS: usize = 4;

/// `y = x·wᵀ + b` for contiguous f32 `x: [tokens, in]`, `w: [out, in]`: computed as `yᵀ = w·xᵀ`
/// so that `y` (row-major) is `gemm`'s preferred column-major output and `xᵀ` is read in place;
/// the bias is pre-filled, by the item that owns the block while it is in cache, and accumulated
/// into (no separate broadcast add). Work items are (token block, output-feature block), a split
/// fixed by the shape, taken from a shared counter by the threads, so a core slowed by other work
/// takes fewer.
fn linear_cpu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (tokens, d_in, d_out): (usize, usize, usize),
    threads: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; tokens * d_out];
    if y.is_empty() {
        return y;
    }
    let token_items = tokens.div_ceil(LINEAR_TOKENS);
    let out_items = LINEAR_MIN_ITEMS
        .div_ceil(token_items)
        .min(d_out.div_ceil(16));
    let out_block = (d_out.div_ceil(out_items)).div_ceil(16) * 16;
    let out_items = d_out.div_ceil(out_block);
    let items = token_items * out_items;
    let threads = if tokens * d_in * d_out < 1 << 20 {
        1
    } else {
        threads.clamp(1, items.max(1))
    };
    let out = SharedMut(y.as_mut_ptr());
    super::pool::for_each(items, threads, |item| {
        let (t0, o0) = (
            (item / out_items) * LINEAR_TOKENS,
            (item % out_items) * out_block,
        );
        let n = LINEAR_TOKENS.min(tokens - t0);
        let m = out_block.min(d_out - o0);
        if let Some(b) = bias {
            for t in t0..t0 + n {
                // SAFETY: row t, features o0..o0+m of y: this item's block alone.
                unsafe { std::slice::from_raw_parts_mut(out.at(t * d_out + o0), m) }
                    .copy_from_slice(&b[o0..o0 + m]);
            }
        }
        // SAFETY: dst is features o0..o0+m of tokens t0..t0+n of y (m × n column-major, column
        // stride d_out); lhs is rows o0..o0+m of w (m × d_in, row stride d_in); rhs is xᵀ for
        // those tokens (d_in × n, column stride d_in). All inside their buffers.
        unsafe {
            gemm::gemm(
                m,
                n,
                d_in,
                out.at(t0 * d_out + o0),
                d_out as isize,
                1,
                bias.is_some(),
                w.as_ptr().add(o0 * d_in),
                1,
                d_in as isize,
                x.as_ptr().add(t0 * d_in),
                d_in as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    y
}

struct LinearCpu {
    d_in: usize,
    d_out: usize,
    bias: Option<Vec<f32>>,
}

impl candle_core::CustomOp2 for LinearCpu {
    fn name(&self) -> &'static str {
        "linear-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let tokens = x.len() / self.d_in.max(1);
        let dims = (tokens, self.d_in, self.d_out);
        let threads = candle_core::utils::get_num_threads();
        let y = match () {
            #[cfg(target_arch = "x86_64")]
            () if super::gemm_f32::available() => {
                super::gemm_f32::linear(x, w, self.bias.as_deref(), dims, threads)
            }
            () => linear_cpu(x, w, self.bias.as_deref(), dims, threads),
        };
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.d_out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// `torch.nn.Linear` over the last dimension of `x` with `weight: [out, in]` and an optional
/// `bias: [out]` through one threaded GEMM: the AVX-512 kernel of `gemm_f32` where the CPU has
/// it, [`linear_cpu`] (the `gemm` crate) otherwise; or `None` where it does not apply.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let mut all = vec![x, weight];
    if let Some(b) = bias {
        all.push(b);
    }
    let (d_out, d_in) = weight.dims2()?;
    if !applies(&all) || x.rank() < 2 || x.dim(candle_core::D::Minus1)? != d_in || d_in == 0 {
        return Ok(None);
    }
    let op = LinearCpu {
        d_in,
        d_out,
        bias: bias
            .map(|b| b.flatten_all()?.to_vec1::<f32>())
            .transpose()?,
    };
    Ok(Some(x.apply_op2_no_bwd(weight, &op)?))
}

/// `x·σ(x)` over a slice, with the vectorisable exponential of the attention kernels.
#[inline(always)]
fn silu_slice(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x / (1.0 + super::attention_cpu::exp_approx(-x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_slice_avx512(src: &[f32], dst: &mut [f32]) {
    silu_slice(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_slice_avx2(src: &[f32], dst: &mut [f32]) {
    silu_slice(src, dst)
}

struct SiluCpu;

impl CustomOp1 for SiluCpu {
    fn name(&self) -> &'static str {
        "silu-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        let isa = simd_level();
        // Rows of 4096 elements: the blocks the threads take in turn.
        let rows = x.len().div_ceil(4096);
        for_row_chunks(x, &mut out, rows, 4096, 4096, |src, dst| match isa {
            // SAFETY: the CPU supports these instructions (`isa`).
            #[cfg(target_arch = "x86_64")]
            2 => unsafe { silu_slice_avx512(src, dst) },
            #[cfg(target_arch = "x86_64")]
            1 => unsafe { silu_slice_avx2(src, dst) },
            _ => silu_slice(src, dst),
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `silu(x) = x·σ(x)` in one threaded, vectorised pass where it applies (f32 CPU, contiguous,
/// no gradient), candle's `silu` otherwise (one scalar `exp` per element on one thread).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if applies(&[x]) {
        return x.apply_op1_no_bwd(&SiluCpu);
    }
    x.silu()
}

/// Elements per block of [`add`] (256 KiB per operand).
const ADD_BLOCK: usize = 1 << 16;

struct AddCpu;

impl candle_core::CustomOp2 for AddCpu {
    fn name(&self) -> &'static str {
        "add-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        if a.len() != b.len() {
            candle_core::bail!("add: {} and {} elements", a.len(), b.len())
        }
        let mut out = vec![0f32; a.len()];
        let threads = if a.len() < PARALLEL_MIN_ELEMENTS * 4 {
            1
        } else {
            candle_core::utils::get_num_threads().max(1)
        };
        let add = |(x, y, o): (&[f32], &[f32], &mut [f32])| {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = x + y;
            }
        };
        let n = a.len();
        let out_ptr = SharedMut(out.as_mut_ptr());
        super::pool::for_each(n.div_ceil(ADD_BLOCK), threads, |i| {
            let (s0, s1) = (i * ADD_BLOCK, ((i + 1) * ADD_BLOCK).min(n));
            // SAFETY: block i owns out[s0..s1].
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(s0), s1 - s0) };
            add((&a[s0..s1], &b[s0..s1], o));
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `a + b` for same-shaped tensors: one threaded pass where it applies (f32 CPU, contiguous, no
/// gradient), candle's add otherwise.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() == b.dims() && applies(&[a, b]) {
        return a.apply_op2_no_bwd(b, &AddCpu);
    }
    a + b
}

struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut out = vec![0f32; b * c * 4 * h * w];
        // One input row → two output rows of doubled pixels; rows are independent.
        for_row_chunks(x, &mut out, b * c * h, w, 4 * w, |src, dst| {
            for (row, pair) in src.chunks_exact(w).zip(dst.chunks_exact_mut(4 * w)) {
                let (top, bottom) = pair.split_at_mut(2 * w);
                for (d, &v) in top.chunks_exact_mut(2).zip(row) {
                    d[0] = v;
                    d[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }
}

/// Nearest-neighbour ×2 upsampling of `x: [B, C, H, W]` (`upsample_nearest2d(2H, 2W)`) in one
/// threaded pass, or `None` where it does not apply.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[x]) || x.rank() != 4 || x.dim(3)? == 0 {
        return Ok(None);
    }
    Ok(Some(x.apply_op1_no_bwd(&Upsample2x)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The rational `erf` stays within 5e-7 of candle's f64 `erf` over the range that matters
    /// and saturates outside it.
    #[test]
    fn erf_is_accurate() {
        for i in -60_000..=60_000 {
            let x = i as f64 * 1e-4;
            let want = candle_core::cpu::erf::erf_f64(x);
            let got = erf_f32(x as f32) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}): {got} vs {want}");
        }
    }

    /// The fused GEGLU equals candle's `narrow`, `gelu_erf` and `mul` (small and threaded sizes).
    #[test]
    fn geglu_matches_candle() -> Result<()> {
        for (rows, inner) in [(3, 5), (700, 256)] {
            let h = (Tensor::randn(0f32, 1.0, (2, rows, 2 * inner), &Device::Cpu)? * 3.0)?;
            let want = h
                .narrow(2, 0, inner)?
                .mul(&h.narrow(2, inner, inner)?.gelu_erf()?)?;
            let Some(got) = geglu(&h)? else {
                candle_core::bail!("kernel did not apply")
            };
            // The erf approximation adds at most 5e-7·|hidden·gate|/2 to f32 rounding of the
            // product: bound relative to the largest output.
            let scale = want
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let err = max_abs(&got, &want)?;
            assert!(err < 1e-6 * scale, "{rows}×{inner}: {err} (scale {scale})");
        }
        Ok(())
    }

    /// The threaded linear equals candle's `Linear` (with and without bias, 2-D and 3-D inputs,
    /// token counts below, at and above a work item), and any thread count gives the same bits.
    #[test]
    fn linear_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, d_in, d_out) in [
            (vec![3, 7], 7, 5),
            (vec![2, 300, 64], 64, 96),
            (vec![600, 40], 40, 256),
        ] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            let w = Tensor::randn(0f32, 0.2, (d_out, d_in), &dev)?;
            let b = Tensor::randn(0f32, 1.0, d_out, &dev)?;
            for bias in [Some(&b), None] {
                let want = candle_nn::Linear::new(w.clone(), bias.cloned()).forward(&x)?;
                let Some(got) = linear(&x, &w, bias)? else {
                    candle_core::bail!("kernel did not apply")
                };
                assert_eq!(got.dims(), want.dims());
                let err = max_abs(&got, &want)?;
                assert!(err < 1e-5, "{shape:?}: {err}");
                // The `gemm` crate's path (CPUs without AVX-512) as well.
                let (xs, ws) = (
                    x.flatten_all()?.to_vec1::<f32>()?,
                    w.flatten_all()?.to_vec1(),
                );
                let bs = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
                let dims = (xs.len() / d_in, d_in, d_out);
                let other = linear_cpu(&xs, &ws?, bs.as_deref(), dims, 2);
                let other = Tensor::from_vec(other, want.shape(), &dev)?;
                let err = max_abs(&other, &want)?;
                assert!(err < 1e-5, "{shape:?}, gemm crate: {err}");
            }
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ws = w.flatten_all()?.to_vec1::<f32>()?;
            let tokens = xs.len() / d_in;
            // No tokens or no output features: an empty result (no work items to divide).
            assert!(linear_cpu(&[], &ws, None, (0, d_in, d_out), 2).is_empty());
            assert!(linear_cpu(&xs, &[], None, (tokens, d_in, 0), 2).is_empty());
            let one = linear_cpu(&xs, &ws, Some(&ws[..d_out]), (tokens, d_in, d_out), 1);
            let many = linear_cpu(&xs, &ws, Some(&ws[..d_out]), (tokens, d_in, d_out), 3);
            assert!(one == many, "thread count changed the result");
        }
        Ok(())
    }

    /// The threaded SiLU equals candle's within the exponential's error.
    #[test]
    fn silu_matches_candle() -> Result<()> {
        let x = (Tensor::randn(0f32, 1.0, (3, 70, 33, 41), &Device::Cpu)? * 6.0)?;
        let err = max_abs(&silu(&x)?, &x.silu()?)?;
        assert!(err < 2e-6, "{err}");
        Ok(())
    }

    /// The threaded nearest ×2 upsampling equals candle's.
    #[test]
    fn upsample_matches_candle() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (2, 70, 9, 13), &Device::Cpu)?;
        let Some(got) = upsample_nearest_2x(&x)? else {
            candle_core::bail!("kernel did not apply")
        };
        assert_eq!(max_abs(&got, &x.upsample_nearest2d(18, 26)?)?, 0.0);
        Ok(())
    }

    /// Micro-benchmark, not a test: candle's `Linear` against [`linear`] on the mid model's and
    /// SD1.5's transformer shapes (best of 30). `cargo test --release -p make-your-anchor-engine
    /// --lib elementwise::tests::bench_linear -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: run explicitly"]
    fn bench_linear() -> Result<()> {
        let dev = Device::Cpu;
        for (tokens, d_in, d_out) in [
            (256, 256, 2048),
            (4096, 64, 512),
            (1024, 128, 1024),
            (256, 256, 256),
            (256, 1024, 256),
            (800, 128, 256),
            (4096, 64, 64),
            (1024, 128, 128),
            (4096, 256, 64),
            (1024, 512, 128),
            (16, 256, 256),
            (64, 256, 2048),
            (8192, 320, 320),
        ] {
            let x = Tensor::randn(0f32, 1.0, (16, tokens / 16, d_in), &dev)?;
            let w = Tensor::randn(0f32, 0.1, (d_out, d_in), &dev)?;
            let b = Tensor::randn(0f32, 0.1, d_out, &dev)?;
            let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
            let best = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
                let mut t_best = f64::INFINITY;
                for _ in 0..30 {
                    let t = std::time::Instant::now();
                    f()?;
                    t_best = t_best.min(t.elapsed().as_secs_f64());
                }
                Ok(t_best)
            };
            let t_candle = best(&|| lin.forward(&x))?;
            let t_ours =
                best(&|| linear(&x, &w, Some(&b))?.ok_or(candle_core::Error::Msg("n/a".into())))?;
            eprintln!(
                "linear-bench {tokens}x{d_in}->{d_out}: candle {:.3} ms, ours {:.3} ms ({:.2}x), \
                 {:.0} GFLOP/s",
                t_candle * 1e3,
                t_ours * 1e3,
                t_candle / t_ours,
                2.0 * (tokens * d_in * d_out) as f64 / t_ours / 1e9
            );
        }
        Ok(())
    }

    /// The fused LayerNorm equals candle's module (with and without bias, threaded sizes).
    #[test]
    fn layer_norm_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, c) in [(3, 40), (2000, 320)] {
            let x = ((Tensor::randn(0f32, 1.0, (rows, c), &dev)? * 2.0)? + 0.5)?;
            let w = Tensor::randn(0f32, 1.0, c, &dev)?;
            let b = Tensor::randn(0f32, 1.0, c, &dev)?;
            for ln in [
                candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5),
                candle_nn::LayerNorm::new_no_bias(w.clone(), 1e-5),
            ] {
                let want = ln.forward(&x)?;
                let Some(got) = layer_norm(&ln, &x)? else {
                    candle_core::bail!("kernel did not apply")
                };
                let err = max_abs(&got, &want)?;
                assert!(err < 1e-5, "{rows}×{c}: {err}");
            }
        }
        Ok(())
    }
}
