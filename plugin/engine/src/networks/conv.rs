//! `Conv2d` for the networks: a threaded im2col + GEMM forward pass on the CPU for inference,
//! candle's module elsewhere, and a faster backward pass on the CPU for training.
//!
//! Inference (f32 on the CPU, groups 1, dilation 1, no gradient tracked): candle 0.11's CPU
//! `conv2d` first transposes the whole input to NHWC on one thread, then gathers each im2col tile
//! with strided writes and scatters each GEMM result back channel by channel, and nests its rayon
//! GEMM inside rayon tiles. [`conv2d_cpu_f32`] instead splits the output into (batch, band of
//! output rows) items spread over threads; each thread gathers its band's im2col rows with
//! contiguous copies straight from the NCHW input and lets one single-threaded `gemm` call write
//! the band of every output channel in place (bias pre-filled, so it is added without another
//! pass). A 1×1, stride-1, unpadded convolution reads the input as the GEMM operand directly.
//!
//! Training: candle differentiates `conv2d` through `conv_transpose2d`, whose CPU kernel is a
//! per-pixel dot product over the input channels inside 9 thread-synchronised loops per 3×3
//! kernel; in training it took about half of each step. When the input or the weight needs a
//! gradient on the CPU in f32 ([`super::differentiable::needs_grad`]), the convolution runs as a
//! custom op whose backward pass writes the input gradient as an ordinary `conv2d` (im2col +
//! GEMM): the output gradient, dilated by the stride and zero-padded by `k − 1 − p`, convolved
//! with the weight flipped in space and transposed in channels. Its forward pass is candle's
//! `conv2d`, so the training path is unchanged by the inference kernel. Other devices and dtypes
//! use candle's module.
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Module, VarBuilder};

use super::cpu::{contiguous_f32, simd_level, SharedMut};

pub use candle_nn::Conv2dConfig;

/// `torch.nn.Conv2d` (keys `weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// The weight as bf16 rows for the CPU bf16 path, made at its first use.
    packed: std::sync::Arc<std::sync::OnceLock<super::gemm_bf16::Packed>>,
}

/// Loads a convolution like `candle_nn::conv2d`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Ok(Conv2d {
        inner: candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?,
        packed: Default::default(),
    })
}

impl Conv2d {
    /// A convolution from its weight (`c_out × c_in × kh × kw`) and optional bias (`c_out`).
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self {
            inner: candle_nn::Conv2d::new(weight, bias, cfg),
            packed: Default::default(),
        }
    }

    /// The geometry of this convolution on `x` (groups 1, dilation 1).
    fn shape(&self, x: &Tensor) -> Result<ConvShape> {
        let w = self.inner.weight();
        let cfg = self.inner.config();
        let (batch, c_in, h, wd) = x.dims4()?;
        let (c_out, w_in, kh, kw) = w.dims4()?;
        if w_in != c_in {
            candle_core::bail!("conv2d: input has {c_in} channels, the weight expects {w_in}")
        }
        Ok(ConvShape {
            batch,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: cfg.stride,
            padding: cfg.padding,
        })
    }

    /// Inference on the CPU in f32 through [`conv2d_cpu_f32`] (groups 1, dilation 1).
    fn forward_cpu_f32(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.inner.weight();
        let sh = self.shape(x)?;
        let bias = self.inner.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
        // A custom op reads the input and weight storages in place (no copy of the weight per
        // call); nothing here tracks a gradient, so it needs no backward pass.
        x.contiguous()?
            .apply_op2_no_bwd(&w.contiguous()?, &InferConv { shape: sh, bias })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _p = crate::profile::scope(crate::profile::Op::Conv2d);
        let w = self.inner.weight();
        let cfg = self.inner.config();
        let cpu_f32 = x.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && self.inner.bias().is_none_or(|b| b.dtype() == DType::F32)
            && cfg.groups == 1
            && cfg.dilation == 1;
        if !cpu_f32 {
            return self.inner.forward(x);
        }
        if super::gemm_bf16::active().is_some() {
            let bf16 =
                super::gemm_bf16::conv2d(x, w, self.inner.bias(), self.shape(x)?, &self.packed)?;
            if let Some(y) = bf16 {
                return Ok(y);
            }
        }
        let mut tracked = vec![x, w];
        if let Some(b) = self.inner.bias() {
            tracked.push(b);
        }
        if !super::differentiable::needs_grad(&tracked) {
            return self.forward_cpu_f32(x);
        }
        let op = TrainConv {
            padding: cfg.padding,
            stride: cfg.stride,
        };
        let y = x.contiguous()?.apply_op2(&w.contiguous()?, op)?;
        match self.inner.bias() {
            None => Ok(y),
            Some(b) => y.broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?),
        }
    }
}

/// Fewest bands a convolution is split into (two per thread for up to four threads); fixed so
/// that the split, and with it the rounding, never depends on the thread count.
const MIN_BANDS: usize = 8;

/// Output pixels per work item that the band height aims for: the im2col band (`K × pixels`
/// floats, K = in channels × kernel area) stays around the 2 MiB L2 of this machine's cores for
/// the SD1.5 widths while each `gemm` call still amortises packing the weight.
const BAND_PIXELS: usize = 256;

/// Multiply-adds below which a convolution runs on the calling thread (thread start-up costs
/// tens of µs).
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// Geometry of one 2-D convolution (NCHW input, OIHW weight, groups 1, dilation 1).
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvShape {
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.kh) / self.stride + 1,
            (self.w + 2 * self.padding - self.kw) / self.stride + 1,
        )
    }

    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

/// Range of output columns `ox` whose input column `ox·s + kx − p` lies in `0..w`.
fn valid_cols(kx: usize, s: usize, p: usize, w: usize, wo: usize) -> (usize, usize) {
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
    let hi = if w + p > kx {
        (w + p - kx).div_ceil(s).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Fills `col` (`K × pixels`, row-major; K ordered like the weight: channel, ky, kx) with the
/// im2col band of output rows `oy0..oy1` of one image `x` (`c_in × h × w`).
pub(super) fn im2col_band(x: &[f32], sh: &ConvShape, oy0: usize, oy1: usize, col: &mut [f32]) {
    let (_, wo) = sh.out_hw();
    let (s, p) = (sh.stride, sh.padding);
    let pixels = (oy1 - oy0) * wo;
    let mut rows = col.chunks_exact_mut(pixels);
    for c in 0..sh.c_in {
        let plane = &x[c * sh.h * sh.w..(c + 1) * sh.h * sh.w];
        for ky in 0..sh.kh {
            for kx in 0..sh.kw {
                let Some(row) = rows.next() else { return };
                let (lo, hi) = valid_cols(kx, s, p, sh.w, wo);
                for (oy, seg) in (oy0..oy1).zip(row.chunks_exact_mut(wo)) {
                    let iy = oy * s + ky;
                    if iy < p || iy - p >= sh.h || lo >= hi {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &plane[(iy - p) * sh.w..(iy - p + 1) * sh.w];
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    let first = lo * s + kx - p;
                    if s == 1 {
                        seg[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                    } else {
                        for (d, v) in seg[lo..hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// `conv2d(x, w) + bias` for contiguous f32 NCHW `x` (`sh.batch × c_in × h × w`) and OIHW `w`
/// (`c_out × c_in × kh × kw`), returning the contiguous NCHW output and its height and width.
///
/// Work items are (image, band of output rows), taken from a shared counter by up to
/// `threads` threads, so a core slowed by other processes takes fewer bands.
pub fn conv2d_cpu_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    sh: &ConvShape,
    threads: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    if sh.stride == 0
        || sh.kh == 0
        || sh.kw == 0
        || sh.h + 2 * sh.padding < sh.kh
        || sh.w + 2 * sh.padding < sh.kw
    {
        candle_core::bail!(
            "conv2d: kernel {}×{} does not fit the input {}×{} (padding {}, stride {})",
            sh.kh,
            sh.kw,
            sh.h,
            sh.w,
            sh.padding,
            sh.stride
        )
    }
    let k = sh.c_in * sh.kh * sh.kw;
    let (ho, wo) = sh.out_hw();
    let (img_in, img_out) = (sh.c_in * sh.h * sh.w, sh.c_out * ho * wo);
    if x.len() != sh.batch * img_in || w.len() != sh.c_out * k {
        candle_core::bail!("conv2d: buffer sizes do not match the shape {sh:?}")
    }
    if bias.is_some_and(|b| b.len() != sh.c_out) {
        candle_core::bail!(
            "conv2d: bias length differs from {} output channels",
            sh.c_out
        )
    }
    if winograd_applies(sh) {
        return Ok((winograd_f2x3(x, w, bias, sh, threads), ho, wo));
    }
    let mut out = vec![0f32; sh.batch * img_out];
    if out.is_empty() {
        return Ok((out, ho, wo));
    }
    let macs = sh.batch * img_out * k;
    let threads = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    // Band height: about BAND_PIXELS pixels, but at least MIN_BANDS bands. It depends on the shape
    // only, never on the thread count: the GEMM's blocking (and so its rounding) depends on the
    // band width, and the same input must give the same pixels on every machine.
    let mut band = BAND_PIXELS.div_ceil(wo).clamp(1, ho);
    while band > 1 && sh.batch * ho.div_ceil(band) < MIN_BANDS {
        band = band.div_ceil(2);
    }
    if band == ho && ho * wo < BAND_PIXELS {
        // Small images: whole images side by side in one GEMM (for at least MIN_BANDS / 2
        // items, two per thread for up to two threads), rather than a GEMM a few pixels wide.
        let mut group = (BAND_PIXELS / (ho * wo)).clamp(1, sh.batch);
        while group > 1 && sh.batch.div_ceil(group) < MIN_BANDS / 2 {
            group = group.div_ceil(2);
        }
        if group > 1 {
            conv_small_images(x, w, bias, sh, threads, group, &mut out);
            return Ok((out, ho, wo));
        }
    }
    let bands = ho.div_ceil(band);
    let items = sh.batch * bands;
    let threads = threads.min(items);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let profiling = crate::profile::enabled();
    super::pool::for_each(items, threads, |item| {
        super::pool::with_scratch(|[col, _, _]| {
            let (b, oy0) = (item / bands, (item % bands) * band);
            let oy1 = (oy0 + band).min(ho);
            let pixels = (oy1 - oy0) * wo;
            let img = &x[b * img_in..(b + 1) * img_in];
            let t0 = profiling.then(std::time::Instant::now);
            let (rhs, rhs_rs) = if sh.direct() {
                (img[oy0 * wo..].as_ptr(), (ho * wo) as isize)
            } else {
                col.resize(k * pixels, 0.0);
                im2col_band(img, sh, oy0, oy1, col);
                (col.as_ptr(), pixels as isize)
            };
            let t1 = profiling.then(std::time::Instant::now);
            // Start of this band in output channel 0; channel rows are `ho·wo` apart.
            let dst = out_ptr.at(b * img_out + oy0 * wo);
            if let Some(bias) = bias {
                for (co, &v) in bias.iter().enumerate() {
                    // SAFETY: `co·ho·wo + pixels ≤ img_out` elements past this image's start
                    // in `out`, inside this item's band, which no other thread writes.
                    unsafe { std::slice::from_raw_parts_mut(dst.add(co * ho * wo), pixels) }
                        .fill(v);
                }
            }
            // Computed transposed, `outᵀ = colᵀ · wᵀ` (pixels × c_out): the band's pixels run
            // with unit stride in the output, the im2col rows and the weight's depth, the layout
            // `gemm`'s kernels read without repacking.
            // SAFETY: dst addresses `c_out` rows of `pixels` floats `ho·wo` apart inside `out`
            // (this item's band only); the pixels × K left operand has column stride `rhs_rs`
            // inside `col` or the input image; the K × c_out weight has column stride K.
            unsafe {
                gemm::gemm(
                    pixels,
                    sh.c_out,
                    k,
                    dst,
                    (ho * wo) as isize,
                    1,
                    bias.is_some(),
                    rhs,
                    rhs_rs,
                    1,
                    w.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if let (Some(t0), Some(t1)) = (t0, t1) {
                let im2col_ns = (t1 - t0).as_nanos() as u64;
                let gemm_ns = t1.elapsed().as_nanos() as u64;
                crate::profile::add_worker_time(crate::profile::Part::ConvGemm, gemm_ns);
                crate::profile::add_worker_time(crate::profile::Part::ConvTransform, im2col_ns);
            }
        })
    });
    Ok((out, ho, wo))
}

/// Fewest input and output channels for the Winograd path: below them the GEMMs are too thin
/// for the 2.25× fewer multiplications to pay for the transforms.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Fewest 2×2 output tiles (over the batch) for the Winograd path: the filter transform, made
/// at every call, must stay small against the GEMMs it shortens.
const WINOGRAD_MIN_TILES: usize = 256;

/// 2×2 output tiles per Winograd work item that the band of tile rows aims for: one transformed
/// channel slice (`c_in × tiles` floats, 512 KiB at 512 channels) stays in L2 during its GEMM.
const WINOGRAD_TILES: usize = 256;

/// Whether [`conv2d_cpu_f32`] takes the Winograd path: 3×3, stride 1, padding 1 (every 3×3
/// convolution of the UNet, ControlNet and VAE except the stride-2 downsamplers), wide enough.
/// Depends on the shape only, so the same input always gives the same bits.
fn winograd_applies(sh: &ConvShape) -> bool {
    sh.kh == 3
        && sh.kw == 3
        && sh.stride == 1
        && sh.padding == 1
        && sh.c_in >= WINOGRAD_MIN_CHANNELS
        && sh.c_out >= WINOGRAD_MIN_CHANNELS
        && sh.batch * sh.h.div_ceil(2) * sh.w.div_ceil(2) >= WINOGRAD_MIN_TILES
}

/// The filter transform `U = G g Gᵀ` of Winograd's F(2×2, 3×3) (Lavin & Gray 2016, arXiv
/// 1509.09308, eq. 8; `G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]`) for every (output, input) channel
/// pair, laid out `[c_out][16][c_in]`: the GEMM of transform position `e` reads rows `e·c_in..`
/// with row stride `16·c_in`. Each thread transforms a contiguous run of output channels.
fn winograd_filters(w: &[f32], c_out: usize, c_in: usize, threads: usize) -> Vec<f32> {
    let mut u = vec![0f32; c_out * 16 * c_in];
    let transform = |co0: usize, chunk: &mut [f32]| {
        for (dco, dst) in chunk.chunks_exact_mut(16 * c_in).enumerate() {
            let co = co0 + dco;
            for ci in 0..c_in {
                let g = &w[(co * c_in + ci) * 9..(co * c_in + ci + 1) * 9];
                // G g: combine the kernel's rows (ky) for each column kx.
                let mut t = [[0f32; 3]; 4];
                for kx in 0..3 {
                    let (a, b, c) = (g[kx], g[3 + kx], g[6 + kx]);
                    t[0][kx] = a;
                    t[1][kx] = 0.5 * (a + b + c);
                    t[2][kx] = 0.5 * (a - b + c);
                    t[3][kx] = c;
                }
                // (G g) Gᵀ: combine the columns.
                for (i, row) in t.iter().enumerate() {
                    let (a, b, c) = (row[0], row[1], row[2]);
                    let r = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                    for (j, v) in r.into_iter().enumerate() {
                        dst[(4 * i + j) * c_in + ci] = v;
                    }
                }
            }
        }
    };
    if threads <= 1 || c_out * c_in < 1 << 14 {
        transform(0, &mut u);
        return u;
    }
    // Blocks of 16 output channels through the kernels' pool (each block's values do not
    // depend on who computes them).
    let per = 16;
    let u_ptr = SharedMut(u.as_mut_ptr());
    super::pool::for_each(c_out.div_ceil(per), threads, |i| {
        let (co0, co1) = (i * per, ((i + 1) * per).min(c_out));
        // SAFETY: block i owns output channels co0..co1 of `u`.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(u_ptr.at(co0 * 16 * c_in), (co1 - co0) * 16 * c_in)
        };
        transform(co0, chunk);
    });
    u
}

/// The tiles of one image that one Winograd transform call covers: tile rows `ty0..ty1`, stored
/// from tile `t_base` of the work item's `n` tiles (a work item may hold several small images).
#[derive(Debug, Clone, Copy)]
struct TileSpan {
    ty0: usize,
    ty1: usize,
    n: usize,
    t_base: usize,
}

/// The input transform `V = Bᵀ d B` of F(2×2, 3×3) (`Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],
/// [0,1,0,−1]]`) of every 4×4 patch of tile rows `ty0..ty1` of one image (`c_in × h × w`, zero
/// padding 1), into `v` laid out `[16][c_in][tiles]` (tiles row-major within the band).
///
/// Patch column `q` of tile `tx` is padded column `2·tx + q`, so each padded input row is split
/// into its even and odd columns first; every step after that is an element-wise operation on
/// whole rows of tiles, which the compiler vectorises.
#[inline(always)]
fn winograd_inputs_impl(
    img: &[f32],
    sh: &ConvShape,
    span: TileSpan,
    scratch: &mut Vec<f32>,
    v: &mut [f32],
) {
    let (h, w, c_in) = (sh.h, sh.w, sh.c_in);
    let tw = w.div_ceil(2);
    let TileSpan {
        ty0,
        ty1,
        n,
        t_base,
    } = span;
    let l = tw + 1;
    scratch.resize(16 * l, 0.0);
    // Even and odd padded columns of the 4 patch rows, then the rows combined (Bᵀ d).
    let (split, combined) = scratch.split_at_mut(8 * l);
    for c in 0..c_in {
        let plane = &img[c * h * w..(c + 1) * h * w];
        for ty in ty0..ty1 {
            for (i, eo) in split.chunks_exact_mut(2 * l).enumerate() {
                let (even, odd) = eo.split_at_mut(l);
                even.fill(0.0);
                odd.fill(0.0);
                // Padded row `2·ty + i` is input row `2·ty + i − 1`.
                let iy = 2 * ty + i;
                if iy == 0 || iy > h {
                    continue;
                }
                let src = &plane[(iy - 1) * w..iy * w];
                // Padded column p is input column p − 1: odd[k] = src[2k], even[k + 1] = src[2k + 1].
                for (k, pair) in src.chunks_exact(2).enumerate() {
                    odd[k] = pair[0];
                    even[k + 1] = pair[1];
                }
                if w % 2 == 1 {
                    odd[w / 2] = src[w - 1];
                }
            }
            let rows: [&[f32]; 8] = std::array::from_fn(|r| &split[r * l..(r + 1) * l]);
            // Bᵀ d: A0 = D0 − D2, A1 = D1 + D2, A2 = D2 − D1, A3 = D1 − D3 (even and odd halves).
            for (half, out) in combined.chunks_exact_mut(4 * l).enumerate() {
                let d: [&[f32]; 4] = std::array::from_fn(|i| rows[2 * i + half]);
                let (a0, rest) = out.split_at_mut(l);
                let (a1, rest) = rest.split_at_mut(l);
                let (a2, a3) = rest.split_at_mut(l);
                for k in 0..l {
                    a0[k] = d[0][k] - d[2][k];
                    a1[k] = d[1][k] + d[2][k];
                    a2[k] = d[2][k] - d[1][k];
                    a3[k] = d[1][k] - d[3][k];
                }
            }
            // (Bᵀ d) B: row i of the patch transform from its even (E) and odd (O) columns:
            // [E[tx] − E[tx+1], O[tx] + E[tx+1], E[tx+1] − O[tx], O[tx] − O[tx+1]].
            let t0 = c * n + t_base + (ty - ty0) * tw;
            for i in 0..4 {
                let ev = &combined[i * l..(i + 1) * l];
                let od = &combined[(4 + i) * l..(5 + i) * l];
                let (e0, e1, o0, o1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..]);
                let at = |j: usize| (4 * i + j) * c_in * n + t0;
                let out = &mut v[at(0)..at(0) + tw];
                for k in 0..tw {
                    out[k] = e0[k] - e1[k];
                }
                let out = &mut v[at(1)..at(1) + tw];
                for k in 0..tw {
                    out[k] = o0[k] + e1[k];
                }
                let out = &mut v[at(2)..at(2) + tw];
                for k in 0..tw {
                    out[k] = e1[k] - o0[k];
                }
                let out = &mut v[at(3)..at(3) + tw];
                for k in 0..tw {
                    out[k] = o0[k] - o1[k];
                }
            }
        }
    }
}

/// The output transform `Y = Aᵀ M A` of F(2×2, 3×3) (`Aᵀ = [[1,1,1,0],[0,1,−1,−1]]`) plus the
/// bias: writes the 2×2 tiles of tile rows `ty0..ty1` of every output channel of one image from
/// `m` (`[16][c_out][tiles]`), clipping the last row and column of an odd-sized output. Like the
/// input transform, each step runs over a whole row of tiles.
///
/// # Safety
/// `dst` addresses one image's `c_out × h × w` output; only rows `2·ty0..min(2·ty1, h)` are
/// written, which belong to this work item alone.
#[inline(always)]
unsafe fn winograd_outputs_impl(
    m: &[f32],
    bias: Option<&[f32]>,
    sh: &ConvShape,
    span: TileSpan,
    scratch: &mut Vec<f32>,
    dst: SharedMut<f32>,
) {
    let (h, w) = (sh.h, sh.w);
    let tw = w.div_ceil(2);
    let TileSpan {
        ty0,
        ty1,
        n,
        t_base,
    } = span;
    let plane = sh.c_out * n;
    scratch.resize(12 * tw, 0.0);
    let (s, y) = scratch.split_at_mut(8 * tw);
    for co in 0..sh.c_out {
        let b = bias.map_or(0.0, |b| b[co]);
        for ty in ty0..ty1 {
            let t0 = co * n + t_base + (ty - ty0) * tw;
            let me: [&[f32]; 16] = std::array::from_fn(|e| &m[e * plane + t0..e * plane + t0 + tw]);
            // Aᵀ M: s0_q = M0q + M1q + M2q, s1_q = M1q − M2q − M3q for each column q.
            for (q, sq) in s.chunks_exact_mut(2 * tw).enumerate() {
                let (s0, s1) = sq.split_at_mut(tw);
                let (m0, m1, m2, m3) = (me[q], me[4 + q], me[8 + q], me[12 + q]);
                for k in 0..tw {
                    s0[k] = m0[k] + m1[k] + m2[k];
                    s1[k] = m1[k] - m2[k] - m3[k];
                }
            }
            // (Aᵀ M) A: output row r, column pair (y_r0, y_r1) of each tile.
            let sq = |q: usize, r: usize| &s[(2 * q + r) * tw..(2 * q + r + 1) * tw];
            for r in 0..2 {
                let (a, bb) = y.split_at_mut(2 * tw);
                let (y0, y1) = a.split_at_mut(tw);
                let _ = bb;
                let (c0, c1, c2, c3) = (sq(0, r), sq(1, r), sq(2, r), sq(3, r));
                for k in 0..tw {
                    y0[k] = c0[k] + c1[k] + c2[k] + b;
                    y1[k] = c1[k] - c2[k] - c3[k] + b;
                }
                let oy = 2 * ty + r;
                if oy >= h {
                    continue;
                }
                // SAFETY: row `oy` of channel `co` lies in this item's band (the contract).
                let row = unsafe { std::slice::from_raw_parts_mut(dst.at((co * h + oy) * w), w) };
                for ((pair, &v0), &v1) in row.chunks_exact_mut(2).zip(y0.iter()).zip(y1.iter()) {
                    pair[0] = v0;
                    pair[1] = v1;
                }
                if w % 2 == 1 {
                    row[w - 1] = y0[tw - 1];
                }
            }
        }
    }
}

/// The transforms compiled for AVX2 + FMA and for AVX-512, chosen at run time (the arithmetic
/// is the same adds and subtractions in the same order, so every build gives the same bits).
#[cfg(target_arch = "x86_64")]
macro_rules! winograd_kernels {
    ($name:ident, $features:literal) => {
        mod $name {
            use super::{ConvShape, SharedMut, TileSpan};

            #[target_feature(enable = $features)]
            pub(super) unsafe fn inputs(
                img: &[f32],
                sh: &ConvShape,
                span: TileSpan,
                scratch: &mut Vec<f32>,
                v: &mut [f32],
            ) {
                super::winograd_inputs_impl(img, sh, span, scratch, v)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn outputs(
                m: &[f32],
                bias: Option<&[f32]>,
                sh: &ConvShape,
                span: TileSpan,
                scratch: &mut Vec<f32>,
                dst: SharedMut<f32>,
            ) {
                // SAFETY: forwarded contract.
                unsafe { super::winograd_outputs_impl(m, bias, sh, span, scratch, dst) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
winograd_kernels!(winograd_avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
winograd_kernels!(winograd_avx512, "avx512f,avx2,fma");

fn winograd_inputs(
    isa: u8,
    img: &[f32],
    sh: &ConvShape,
    span: TileSpan,
    scratch: &mut Vec<f32>,
    v: &mut [f32],
) {
    match isa {
        // SAFETY: the CPU supports these instructions (`simd_level`).
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { winograd_avx512::inputs(img, sh, span, scratch, v) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { winograd_avx2::inputs(img, sh, span, scratch, v) },
        _ => winograd_inputs_impl(img, sh, span, scratch, v),
    }
}

/// # Safety
/// As [`winograd_outputs_impl`].
#[allow(clippy::too_many_arguments)]
unsafe fn winograd_outputs(
    isa: u8,
    m: &[f32],
    bias: Option<&[f32]>,
    sh: &ConvShape,
    span: TileSpan,
    scratch: &mut Vec<f32>,
    dst: SharedMut<f32>,
) {
    // SAFETY: the CPU supports these instructions (`simd_level`); the caller keeps the
    // output contract.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            2 => winograd_avx512::outputs(m, bias, sh, span, scratch, dst),
            #[cfg(target_arch = "x86_64")]
            1 => winograd_avx2::outputs(m, bias, sh, span, scratch, dst),
            _ => winograd_outputs_impl(m, bias, sh, span, scratch, dst),
        }
    }
}

/// 3×3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
/// Gray 2016): 16 multiplications per 2×2 output tile and channel pair instead of 36, as 16 GEMMs
/// `M_e = U_e · V_e` (`c_out × c_in` by `c_in × tiles`) between the input and output transforms.
/// The transforms only add, subtract and halve, so the result stays within a few ulps of the
/// direct sum (the tests bound it against candle's convolution).
///
/// Work items are (image, band of tile rows) of a size fixed by the shape alone, taken from a
/// shared counter, so any thread count gives the same bits.
fn winograd_f2x3(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    sh: &ConvShape,
    threads: usize,
) -> Vec<f32> {
    let (c_in, c_out, h, wd) = (sh.c_in, sh.c_out, sh.h, sh.w);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let (img_in, img_out) = (c_in * h * wd, c_out * h * wd);
    let threads = threads.max(1);
    let profiling = crate::profile::enabled();
    let isa = simd_level();
    let tf = profiling.then(std::time::Instant::now);
    let u = winograd_filters(w, c_out, c_in, threads);
    if let Some(tf) = tf {
        let ns = tf.elapsed().as_nanos() as u64 * threads as u64;
        crate::profile::add_worker_time(crate::profile::Part::ConvTransform, ns);
    }
    let mut out = vec![0f32; sh.batch * img_out];
    // Work items: a band of tile rows of one image, or, for images smaller than WINOGRAD_TILES
    // tiles, `group` whole images (so that the GEMMs stay wide). Both depend on the shape only.
    let mut band = WINOGRAD_TILES.div_ceil(tw).clamp(1, th);
    while band > 1 && sh.batch * th.div_ceil(band) < MIN_BANDS {
        band = band.div_ceil(2);
    }
    let mut group = if band == th {
        (WINOGRAD_TILES / (th * tw)).clamp(1, sh.batch)
    } else {
        1
    };
    while group > 1 && sh.batch.div_ceil(group) < MIN_BANDS {
        group = group.div_ceil(2);
    }
    let bands = th.div_ceil(band);
    let items = sh.batch.div_ceil(group) * bands;
    let threads = threads.min(items);
    let out_ptr = SharedMut(out.as_mut_ptr());
    super::pool::for_each(items, threads, |item| {
        super::pool::with_scratch(|[v, m, rows]| {
            let (b0, ty0) = ((item / bands) * group, (item % bands) * band);
            let (b1, ty1) = ((b0 + group).min(sh.batch), (ty0 + band).min(th));
            let per_image = (ty1 - ty0) * tw;
            let n = (b1 - b0) * per_image;
            let span = |b: usize| TileSpan {
                ty0,
                ty1,
                n,
                t_base: (b - b0) * per_image,
            };
            v.resize(16 * c_in * n, 0.0);
            m.resize(16 * c_out * n, 0.0);
            let t0 = profiling.then(std::time::Instant::now);
            for b in b0..b1 {
                let img = &x[b * img_in..(b + 1) * img_in];
                winograd_inputs(isa, img, sh, span(b), rows, v);
            }
            let t1 = profiling.then(std::time::Instant::now);
            for e in 0..16 {
                // Computed transposed, `M_eᵀ = V_eᵀ · U_eᵀ` (tiles × c_out), so that every
                // operand is already in the layout `gemm`'s kernels read (unit stride along the
                // output's rows and the right operand's depth) and nothing is repacked.
                // SAFETY: dst is `m`'s slice e, `n × c_out` with column stride n; lhs `v`'s
                // slice e, `n × c_in` with column stride n; rhs U's position e, `c_in × c_out`
                // with column stride 16·c_in. All inside their buffers.
                unsafe {
                    gemm::gemm(
                        n,
                        c_out,
                        c_in,
                        m.as_mut_ptr().add(e * c_out * n),
                        n as isize,
                        1,
                        false,
                        v.as_ptr().add(e * c_in * n),
                        n as isize,
                        1,
                        u.as_ptr().add(e * c_in),
                        (16 * c_in) as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            let t2 = profiling.then(std::time::Instant::now);
            for b in b0..b1 {
                // SAFETY: this item owns output rows 2·ty0..2·ty1 of images b0..b1.
                unsafe {
                    let dst = SharedMut(out_ptr.at(b * img_out));
                    winograd_outputs(isa, m, bias, sh, span(b), rows, dst)
                };
            }
            if let (Some(t0), Some(t1), Some(t2)) = (t0, t1, t2) {
                let gemm_ns = (t2 - t1).as_nanos() as u64;
                let rest = (t1 - t0).as_nanos() as u64 + t2.elapsed().as_nanos() as u64;
                crate::profile::add_worker_time(crate::profile::Part::ConvGemm, gemm_ns);
                crate::profile::add_worker_time(crate::profile::Part::ConvTransform, rest);
            }
        })
    });
    out
}

/// [`conv2d_cpu_f32`] for images of fewer than [`BAND_PIXELS`] output pixels: each work item
/// takes `group` whole images, lays their im2col columns side by side (`K × group·pixels`), runs
/// one GEMM into a scratch block (bias pre-filled) and copies each image's channels out. The
/// grouping depends on the shape only.
fn conv_small_images(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    sh: &ConvShape,
    threads: usize,
    group: usize,
    out: &mut [f32],
) {
    let k = sh.c_in * sh.kh * sh.kw;
    let (ho, wo) = sh.out_hw();
    let p_img = ho * wo;
    let (img_in, img_out) = (sh.c_in * sh.h * sh.w, sh.c_out * p_img);
    let items = sh.batch.div_ceil(group);
    let threads = threads.min(items);
    let out_ptr = SharedMut(out.as_mut_ptr());
    super::pool::for_each(items, threads, |item| {
        super::pool::with_scratch(|[one, col, block]| {
            let (b0, b1) = (item * group, ((item + 1) * group).min(sh.batch));
            let np = (b1 - b0) * p_img;
            one.resize(k * p_img, 0.0);
            col.resize(k * np, 0.0);
            for b in b0..b1 {
                im2col_band(&x[b * img_in..(b + 1) * img_in], sh, 0, ho, one);
                let j = (b - b0) * p_img;
                for (dst, src) in col.chunks_exact_mut(np).zip(one.chunks_exact(p_img)) {
                    dst[j..j + p_img].copy_from_slice(src);
                }
            }
            block.resize(sh.c_out * np, 0.0);
            if let Some(bias) = bias {
                for (row, &v) in block.chunks_exact_mut(np).zip(bias) {
                    row.fill(v);
                }
            }
            // SAFETY: block is np × c_out column-major (column stride np); col np × K
            // column-major (column stride np); w K × c_out (column stride K).
            unsafe {
                gemm::gemm(
                    np,
                    sh.c_out,
                    k,
                    block.as_mut_ptr(),
                    np as isize,
                    1,
                    bias.is_some(),
                    col.as_ptr(),
                    np as isize,
                    1,
                    w.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for b in b0..b1 {
                let j = (b - b0) * p_img;
                for (co, row) in block.chunks_exact(np).enumerate() {
                    // SAFETY: channel co of image b, which only this item writes.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.at(b * img_out + co * p_img), p_img)
                    };
                    dst.copy_from_slice(&row[j..j + p_img]);
                }
            }
        })
    });
}

/// [`conv2d_cpu_f32`] as a custom op on contiguous f32 CPU storages (inference only).
struct InferConv {
    shape: ConvShape,
    bias: Option<Vec<f32>>,
}

impl CustomOp2 for InferConv {
    fn name(&self) -> &'static str {
        "infer-conv2d"
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
        let threads = candle_core::utils::get_num_threads();
        let sh = &self.shape;
        let (out, ho, wo) = conv2d_cpu_f32(x, w, self.bias.as_deref(), sh, threads)?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((sh.batch, sh.c_out, ho, wo)),
        ))
    }
}

/// A contiguous f32 CPU storage as a (graph-free) tensor.
fn as_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    Tensor::from_slice(
        contiguous_f32(s, l, "conv2d backward")?,
        l.shape(),
        &candle_core::Device::Cpu,
    )
}

/// `conv2d` (no bias, groups 1, dilation 1) with the GEMM-based backward pass.
struct TrainConv {
    padding: usize,
    stride: usize,
}

impl CustomOp2 for TrainConv {
    fn name(&self) -> &'static str {
        "train-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = as_tensor(s1, l1)?.conv2d(&as_tensor(s2, l2)?, self.padding, self.stride, 1, 1)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let (_, _, h, wd) = x.dims4()?;
        let (b, cout, ho, wo) = grad.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (s, p) = (self.stride, self.padding);
        // Input gradient: dilate the output gradient by the stride...
        let mut g = grad.contiguous()?;
        if s > 1 {
            let z = Tensor::zeros((b, cout, ho, s - 1, wo), g.dtype(), g.device())?;
            g = Tensor::cat(&[&g.unsqueeze(3)?, &z], 3)?
                .reshape((b, cout, ho * s, wo))?
                .narrow(2, 0, (ho - 1) * s + 1)?;
            let hd = (ho - 1) * s + 1;
            let z = Tensor::zeros((b, cout, hd, wo, s - 1), g.dtype(), g.device())?;
            g = Tensor::cat(&[&g.unsqueeze(4)?, &z], 4)?
                .reshape((b, cout, hd, wo * s))?
                .narrow(3, 0, (wo - 1) * s + 1)?;
        }
        // ...pad by k − 1 − p (plus what the forward's floor division dropped at the end)...
        let grad_x = if kh > p && kw > p {
            let (top, left) = (kh - 1 - p, kw - 1 - p);
            let (gh, gw) = (g.dim(2)?, g.dim(3)?);
            let bottom = (h + kh - 1).saturating_sub(gh + top);
            let right = (wd + kw - 1).saturating_sub(gw + left);
            let g = g
                .pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?;
            // ...and convolve with the weight flipped in space, in and out channels swapped.
            let wt = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
            g.conv2d(&wt, 0, 1, 1, 1)?
                .narrow(2, 0, h)?
                .narrow(3, 0, wd)?
        } else {
            grad.conv_transpose2d(&w, p, h - ((ho - 1) * s + kh - 2 * p), s, 1)?
        };
        // Weight gradient: the input and the output gradient correlated, as candle does.
        let grad_w = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, p, 1, s, 1)?
            .transpose(0, 1)?;
        let grad_w = if grad_w.dim(2)? != kh || grad_w.dim(3)? != kw {
            grad_w.narrow(2, 0, kh)?.narrow(3, 0, kw)?
        } else {
            grad_w
        };
        Ok((Some(grad_x), Some(grad_w.contiguous()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// candle's `conv2d` plus the bias: the reference for the inference kernel.
    fn candle_conv(x: &Tensor, w: &Tensor, b: &Tensor, p: usize, s: usize) -> Result<Tensor> {
        x.conv2d(w, p, s, 1, 1)?
            .broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?)
    }

    /// The threaded im2col + GEMM inference kernel equals candle's `conv2d` on random inputs:
    /// 3×3 with padding 0/1 and stride 1/2, non-square and odd sizes, 1×1 (the direct GEMM
    /// path, and strided/padded 1×1 through im2col), a 4×4 kernel, a batch that spans several
    /// threads' bands, and with and without bias. The module's forward takes the kernel.
    #[test]
    fn inference_kernel_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, c_in, c_out, h, w, k, stride, padding)
        for (n, ci, co, h, w, k, s, p) in [
            (2, 5, 7, 9, 13, 3, 1, 1),
            (2, 5, 7, 9, 13, 3, 2, 1),
            (1, 4, 6, 10, 7, 3, 2, 0),
            (3, 8, 5, 11, 6, 3, 1, 0),
            (2, 6, 9, 8, 12, 1, 1, 0),
            (2, 6, 9, 9, 12, 1, 2, 0),
            (1, 3, 4, 7, 5, 1, 1, 1),
            (2, 3, 4, 9, 10, 4, 2, 1),
            (4, 32, 48, 40, 24, 3, 1, 1),
            (4, 64, 64, 8, 8, 1, 1, 0),
            // Small images, grouped several per GEMM (3×3 at 4², 1×1 at 2², stride 2 at 6²).
            (16, 24, 20, 4, 4, 3, 1, 1),
            (32, 16, 12, 2, 2, 1, 1, 0),
            (16, 8, 8, 6, 6, 3, 2, 1),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, ci, h, w), &dev)?;
            // Weights at the usual 1/√fan-in scale, so outputs are O(1) like the networks'.
            let wt = Tensor::randn(
                0f32,
                1.0 / ((ci * k * k) as f32).sqrt(),
                (co, ci, k, k),
                &dev,
            )?;
            let b = Tensor::randn(0f32, 1.0, co, &dev)?;
            let reference = candle_conv(&x, &wt, &b, p, s)?;
            // The sums run over K in another order (channel-major like the weight, candle goes
            // kernel-position-major), so they round differently: a few ulps of the output scale.
            let tol = 4e-6
                * reference
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?
                    .max(1.0);
            let cfg = Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            let with_bias = Conv2d::new(wt.clone(), Some(b), cfg).forward(&x)?;
            assert_eq!(with_bias.dims(), reference.dims());
            let err = max_abs(&with_bias, &reference)?;
            assert!(
                err < tol,
                "{n}×{ci}→{co} {h}×{w} k{k} s{s} p{p}: max-abs {err}"
            );
            let plain = Conv2d::new(wt.clone(), None, cfg).forward(&x)?;
            let err = max_abs(&plain, &x.conv2d(&wt, p, s, 1, 1)?)?;
            assert!(err < tol, "no bias, k{k} s{s} p{p}: max-abs {err}");
            // Single-threaded and many-threaded runs give the same numbers.
            let sh = ConvShape {
                batch: n,
                c_in: ci,
                h,
                w,
                c_out: co,
                kh: k,
                kw: k,
                stride: s,
                padding: p,
            };
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ws = wt.flatten_all()?.to_vec1::<f32>()?;
            let one = conv2d_cpu_f32(&xs, &ws, None, &sh, 1)?;
            let many = conv2d_cpu_f32(&xs, &ws, None, &sh, 5)?;
            assert_eq!(one, many);
        }
        Ok(())
    }

    /// The UNet's `conv_out` at a 32² latent (4 outputs, K = 320·9): the shape whose GEMM
    /// blocking would change with the band width. Any thread count gives identical bits.
    #[test]
    fn thread_count_never_changes_the_result() -> Result<()> {
        let sh = ConvShape {
            batch: 2,
            c_in: 320,
            h: 32,
            w: 32,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let x = Tensor::randn(0f32, 1.0, (2, 320, 32, 32), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.05, (4, 320, 3, 3), &Device::Cpu)?;
        let (xs, ws) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
        );
        let one = conv2d_cpu_f32(&xs, &ws, None, &sh, 1)?;
        for threads in [2, 3, 8, 16, 64] {
            assert!(
                one == conv2d_cpu_f32(&xs, &ws, None, &sh, threads)?,
                "{threads} threads changed the result"
            );
        }
        Ok(())
    }

    /// The Winograd path (3×3, stride 1, padding 1, wide enough) gives identical bits for any
    /// thread count, on odd and even sizes and a batch.
    #[test]
    fn winograd_thread_count_never_changes_the_result() -> Result<()> {
        // The last shape groups 4 small images per work item.
        for (n, c, h, w) in [(2, 32, 33, 18), (4, 24, 16, 16), (32, 16, 8, 7)] {
            let sh = ConvShape {
                batch: n,
                c_in: c,
                h,
                w,
                c_out: 40,
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            };
            assert!(
                winograd_applies(&sh),
                "{sh:?} should take the Winograd path"
            );
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu)?;
            let wt = Tensor::randn(0f32, 0.05, (40, c, 3, 3), &Device::Cpu)?;
            let b = Tensor::randn(0f32, 1.0, 40, &Device::Cpu)?;
            let (xs, ws, bs) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                wt.flatten_all()?.to_vec1::<f32>()?,
                b.to_vec1::<f32>()?,
            );
            let one = conv2d_cpu_f32(&xs, &ws, Some(&bs), &sh, 1)?;
            for threads in [2, 3, 7] {
                assert!(
                    one == conv2d_cpu_f32(&xs, &ws, Some(&bs), &sh, threads)?,
                    "{threads} threads changed the result"
                );
            }
            let reference = candle_conv(&x, &wt, &b, 1, 1)?;
            let got = Tensor::from_vec(one.0, (n, 40, h, w), &Device::Cpu)?;
            let err = max_abs(&got, &reference)?;
            assert!(err < 4e-6, "{sh:?}: max-abs {err} against candle");
        }
        Ok(())
    }

    /// A kernel larger than the padded input is an error, not a panic.
    #[test]
    fn inference_kernel_rejects_oversized_kernel() {
        let sh = ConvShape {
            batch: 1,
            c_in: 1,
            h: 2,
            w: 2,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 0,
        };
        assert!(conv2d_cpu_f32(&[0.0; 4], &[0.0; 9], None, &sh, 2).is_err());
    }

    /// Inference uses the kernel, training still records a graph: a weight held in a `Var`
    /// gets its gradient through the module.
    #[test]
    fn training_still_differentiates() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 5), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(w.as_tensor().clone(), None, cfg);
        let y = conv.forward(&x)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let Some(g) = grads.get(w.as_tensor()) else {
            candle_core::bail!("no weight gradient through the module")
        };
        let reference = x.conv2d(w.as_tensor(), 1, 1, 1, 1)?;
        let expected = reference.sqr()?.sum_all()?.backward()?;
        let Some(e) = expected.get(w.as_tensor()) else {
            candle_core::bail!("no weight gradient through candle")
        };
        let err = max_abs(g, e)?;
        assert!(err < 1e-3, "weight gradient differs by {err}");
        Ok(())
    }

    /// Micro-benchmark, not a test: the SD1.5 UNet's convolution shapes at 64² latents, batch 4,
    /// candle's `conv2d` against the inference kernel (both with bias), best of 3 runs. Run with
    /// `cargo test -p make-your-anchor-engine --lib conv::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: run explicitly, see BENCHMARKS.md"]
    fn bench_sd15_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let threads = candle_core::utils::get_num_threads();
        // (label, c_in, c_out, size, kernel, stride, padding)
        for (label, ci, co, size, k, s, p) in [
            ("conv_in 4->320 3x3 @64", 4, 320, 64, 3, 1, 1),
            ("320->320 3x3 @64", 320, 320, 64, 3, 1, 1),
            ("320->320 3x3 s2 @64", 320, 320, 64, 3, 2, 1),
            ("640->640 3x3 @32", 640, 640, 32, 3, 1, 1),
            ("1280->1280 3x3 @16", 1280, 1280, 16, 3, 1, 1),
            ("1280->1280 3x3 @8", 1280, 1280, 8, 3, 1, 1),
            ("320->320 1x1 @64", 320, 320, 64, 1, 1, 0),
            ("640->640 1x1 @32", 640, 640, 32, 1, 1, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (4, ci, size, size), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, co, &dev)?;
            let cfg = Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            let conv = Conv2d::new(w.clone(), Some(b.clone()), cfg);
            let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<(f64, Tensor)> {
                let mut best = f64::INFINITY;
                let mut last = None;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    let y = f()?;
                    best = best.min(t.elapsed().as_secs_f64());
                    last = Some(y);
                }
                let Some(y) = last else {
                    candle_core::bail!("no run")
                };
                Ok((best, y))
            };
            let (t_candle, y_candle) = time(&|| candle_conv(&x, &w, &b, p, s))?;
            let (t_ours, y_ours) = time(&|| conv.forward(&x))?;
            let err = max_abs(&y_candle, &y_ours)?;
            let gflop = 2.0 * y_ours.elem_count() as f64 * (ci * k * k) as f64 / 1e9;
            eprintln!(
                "conv-bench {label:24} threads {threads}: candle {:8.1} ms, ours {:8.1} ms                  ({:.2}x, {:.1} GFLOP/s), max-abs {err:.2e}",
                t_candle * 1e3,
                t_ours * 1e3,
                t_candle / t_ours,
                gflop / t_ours
            );
        }
        Ok(())
    }

    /// The custom backward pass equals candle's for the strides and paddings the networks use
    /// (square inputs: candle's own backward sizes the width like the height).
    #[test]
    fn backward_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (k, s, p, size) in [
            (3, 1, 1, 9),
            (3, 2, 1, 9),
            (3, 2, 0, 10),
            (1, 1, 0, 7),
            (3, 2, 1, 8),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev)?)?;
            let r = Tensor::randn(
                0f32,
                1.0,
                (2, 4, (size + 2 * p - k) / s + 1, (size + 2 * p - k) / s + 1),
                &dev,
            )?;
            let reference = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1)?;
            let ours = x.as_tensor().apply_op2(
                w.as_tensor(),
                TrainConv {
                    padding: p,
                    stride: s,
                },
            )?;
            assert!((&reference - &ours)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
            let g1 = reference.mul(&r)?.sum_all()?.backward()?;
            let g2 = ours.mul(&r)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (g1.get(v.as_tensor()), g2.get(v.as_tensor()));
                let (Some(a), Some(b)) = (a, b) else {
                    candle_core::bail!("missing gradient")
                };
                let err = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(err < 1e-4, "k{k} s{s} p{p}: gradient differs by {err}");
            }
        }
        Ok(())
    }
}
