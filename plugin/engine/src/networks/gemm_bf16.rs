//! bf16 matrix products on the CPU with f32 accumulation: the `--precision bf16` path.
//!
//! Like `torch.autocast(device_type="cpu", dtype=torch.bfloat16)`, a CPU bf16 run keeps the
//! network's tensors in f32 and only its matrix products (linear layers, convolutions, the fused
//! attention's `q·kᵀ` and `p·v`) read their operands rounded to bf16 (round to nearest even) and
//! accumulate in f32. Norms, softmax sums, activations and residual adds stay f32. The mode is
//! scoped to the calling thread ([`scope`]), as autocast is, so two renders with different
//! precisions can share a process.
//!
//! Two kernels, picked once from the processor:
//! - **AMX** (`amx_bf16`, Intel Sapphire Rapids and later): `tdpbf16ps` on 16 × 16 f32 tiles,
//!   a 32 × 32 block of the product per step (four accumulator tiles);
//! - **AVX-512 BF16** (`avx512_bf16`: Intel Cooper Lake and later, AMD Zen 4 and later):
//!   `vdpbf16ps`, 8 rows × 32 columns of accumulators.
//!
//! Both read the same layouts: the left operand `a` as bf16 rows (`m × k`, `k` padded with zeros
//! to a multiple of 32), the right operand `b` in the "VNNI" layout the dot-product instructions
//! take (`k/2` rows of `n` pairs: element `(2p + i, j)` at `(p·n + j)·2 + i`), and the product
//! `c` as f32 rows. On a processor with neither, [`available`] is `None` and callers keep their
//! f32 kernels: bf16 then runs exactly like f32. `ANCHOR_CPU_BF16=off|avx512` (read once) turns
//! the kernels off or keeps AMX unused, for tests and benchmarks.
//!
//! Per element, a result depends only on its row of `a`, its column of `b` and `k` (the order of
//! the sum is fixed by the kernel and `KC`), never on the thread count or on which rows or
//! columns were computed together.
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::attention_cpu::attention_dims;
use super::conv::ConvShape;
use super::cpu::{contiguous_f32, SharedMut};

/// The bf16 dot-product instructions a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512,
}

/// The best bf16 kernel this processor (and this process's `ANCHOR_CPU_BF16`) allows.
pub fn available() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let choice = std::env::var("ANCHOR_CPU_BF16").unwrap_or_default();
        let kernel = detect(choice.trim());
        log::debug!("CPU bf16 matrix products: {kernel:?} (ANCHOR_CPU_BF16={choice:?})");
        kernel
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(choice: &str) -> Option<Kernel> {
    if choice == "off" || !std::is_x86_feature_detected!("avx512bf16") {
        return None;
    }
    if choice != "avx512" && amx::enable() {
        return Some(Kernel::Amx);
    }
    Some(Kernel::Avx512)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_choice: &str) -> Option<Kernel> {
    None
}

thread_local! {
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the calling thread's matrix products run in bf16 where the processor can
/// ([`active`]); dropping it restores the previous mode.
#[must_use = "the mode ends when the guard is dropped"]
pub struct Scope {
    previous: bool,
}

/// Turns the calling thread's CPU bf16 mode on (or off) until the guard is dropped.
pub fn scope(on: bool) -> Scope {
    Scope {
        previous: BF16.with(|c| c.replace(on)),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        BF16.with(|c| c.set(self.previous));
    }
}

/// The kernel to use now: the thread is in a bf16 [`scope`] and the processor has one.
pub fn active() -> Option<Kernel> {
    if BF16.with(Cell::get) {
        available()
    } else {
        None
    }
}

/// Depth of one pass over `k`: a 32-row block of `a` (32 × 512 bf16, 32 KiB) stays in L1 while
/// it meets every column block of `b`.
const KC: usize = 512;

/// Rounds `x` up to a multiple of `to`.
fn pad(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN), as `vcvtneps2bf16` does; without
/// branches, so that loops over it vectorise.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// `rows × cols` f32 (row stride `ld`) into bf16 rows of `ld_dst` (≥ cols), zero-padded to
/// `ld_dst` columns and `rows_dst` rows.
fn to_rows(
    src: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    dst: &mut [u16],
    rows_dst: usize,
    ld_dst: usize,
) {
    for r in 0..rows_dst {
        let d = &mut dst[r * ld_dst..(r + 1) * ld_dst];
        if r < rows {
            let s = &src[r * ld..r * ld + cols];
            for (o, &v) in d.iter_mut().zip(s) {
                *o = bf16_bits(v);
            }
            d[cols..].fill(0);
        } else {
            d.fill(0);
        }
    }
}

/// One VNNI pair row: `dst[j] = (x0[j], x1[j])` in bf16 for `j < x0.len()` (`x1` absent: zeros),
/// zeros up to `dst.len() / 2` pairs.
#[inline(always)]
fn pair_row(x0: &[f32], x1: Option<&[f32]>, dst: &mut [u16]) {
    let n = x0.len();
    let (head, tail) = dst.split_at_mut(2 * n);
    match x1 {
        Some(x1) => {
            for ((o, &a), &b) in head.chunks_exact_mut(2).zip(x0).zip(&x1[..n]) {
                // One 32-bit store per pair.
                let pair = bf16_bits(a) as u32 | (bf16_bits(b) as u32) << 16;
                o.copy_from_slice(&[pair as u16, (pair >> 16) as u16]);
            }
        }
        None => {
            for (o, &a) in head.chunks_exact_mut(2).zip(x0) {
                o.copy_from_slice(&[bf16_bits(a), 0]);
            }
        }
    }
    tail.fill(0);
}

/// `k × n` f32 rows (row stride `ld`) into the VNNI layout with `kp/2` pair rows of `np` pairs
/// (zero-padded).
fn to_vnni(src: &[f32], k: usize, n: usize, ld: usize, dst: &mut [u16], kp: usize, np: usize) {
    for p in 0..kp / 2 {
        let d = &mut dst[p * np * 2..(p + 1) * np * 2];
        let (r0, r1) = (2 * p, 2 * p + 1);
        if r0 >= k {
            d.fill(0);
            continue;
        }
        let row = |r: usize| &src[r * ld..r * ld + n];
        pair_row(row(r0), (r1 < k).then(|| row(r1)), d);
    }
}

/// The right operand of a convolution band in VNNI (`kp/2` pair rows of `np` pairs), gathered
/// channel by channel: each channel's `kh·kw` im2col rows (`conv::im2col_band` on that plane
/// alone) stay in L1 while they are paired and rounded, instead of a whole f32 band in memory.
/// `rows` is scratch space.
#[allow(clippy::too_many_arguments)]
fn im2col_vnni(
    img: &[f32],
    sh: &ConvShape,
    oy0: usize,
    oy1: usize,
    pixels: usize,
    dst: &mut [u16],
    kp: usize,
    np: usize,
    rows: &mut Vec<f32>,
) {
    let taps = sh.kh * sh.kw;
    let one = ConvShape {
        batch: 1,
        c_in: 1,
        ..*sh
    };
    let plane = sh.h * sh.w;
    rows.resize((taps + 1) * pixels, 0.0);
    // Rows waiting for a partner: 0 or 1, at the front of `rows`.
    let mut held = 0;
    let mut pair = 0;
    for c in 0..sh.c_in {
        let start = held * pixels;
        super::conv::im2col_band(
            &img[c * plane..(c + 1) * plane],
            &one,
            oy0,
            oy1,
            &mut rows[start..start + taps * pixels],
        );
        let total = held + taps;
        for q in 0..total / 2 {
            let (r0, r1) = rows[2 * q * pixels..(2 * q + 2) * pixels].split_at(pixels);
            pair_row(r0, Some(r1), &mut dst[pair * np * 2..(pair + 1) * np * 2]);
            pair += 1;
        }
        held = total % 2;
        if held == 1 {
            rows.copy_within((total - 1) * pixels..total * pixels, 0);
        }
    }
    if held == 1 {
        pair_row(
            &rows[..pixels],
            None,
            &mut dst[pair * np * 2..(pair + 1) * np * 2],
        );
        pair += 1;
    }
    dst[pair * np * 2..kp / 2 * np * 2].fill(0);
}

/// The transpose of `n × k` f32 rows (row stride `ld`), i.e. a `k × n` operand, into the VNNI
/// layout (`kp/2` pair rows of `np` pairs): pairs are consecutive elements of a source row.
fn to_vnni_t(src: &[f32], n: usize, k: usize, ld: usize, dst: &mut [u16], kp: usize, np: usize) {
    dst[..kp / 2 * np * 2].fill(0);
    for j in 0..n {
        let row = &src[j * ld..j * ld + k];
        for (p, pair) in row.chunks(2).enumerate() {
            let o = (p * np + j) * 2;
            dst[o] = bf16_bits(pair[0]);
            dst[o + 1] = pair.get(1).map_or(0, |&v| bf16_bits(v));
        }
    }
}

/// A matrix product's constant operand in bf16, made once (a layer's weight).
#[derive(Debug)]
pub struct Packed {
    /// Rows (`a`) or pairs per row (`b`) after padding.
    n: usize,
    /// Depth after padding (a multiple of 32).
    kp: usize,
    data: Vec<u16>,
}

/// One depth chunk (`kc` ≤ `KC`) of a product from one corner: `a` bf16 rows (stride `lda`),
/// `b` VNNI (`ldb` pairs per pair row), `c` f32 rows (stride `ldc`), and whether `c` is read
/// (accumulated into) or overwritten.
#[derive(Clone, Copy)]
struct Panel {
    kc: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
}

impl Panel {
    /// The same panel from row `i`, column `j` of `c`.
    ///
    /// # Safety
    /// The corner lies inside the operands.
    #[inline(always)]
    unsafe fn at(self, i: usize, j: usize) -> Self {
        Self {
            a: self.a.add(i * self.lda),
            b: self.b.add(j * 2),
            c: self.c.add(i * self.ldc + j),
            ..self
        }
    }
}

/// `c[m × n] (+)= a[m × kp] · b[kp × n]` (`a` bf16 rows with stride `lda`, `b` VNNI with `ldb`
/// pairs per pair row, `c` f32 rows with stride `ldc`). `m` and `n` are multiples of 16, `kp` of
/// 32.
///
/// # Safety
/// The pointers address operands of those sizes and strides; `c` is not read by another thread
/// while this runs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    kernel: Kernel,
    m: usize,
    n: usize,
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(m.is_multiple_of(16) && n.is_multiple_of(16) && kp.is_multiple_of(32));
    #[cfg(target_arch = "x86_64")]
    {
        if kernel == Kernel::Amx {
            amx::configure();
        }
        for k0 in (0..kp).step_by(KC) {
            let panel = Panel {
                kc: KC.min(kp - k0),
                a: a.add(k0),
                lda,
                b: b.add(k0 / 2 * ldb * 2),
                ldb,
                c,
                ldc,
                load: accumulate || k0 > 0,
            };
            match kernel {
                Kernel::Amx => amx::panel(m, n, panel),
                Kernel::Avx512 => avx512::panel(m, n, panel),
            }
        }
        if kernel == Kernel::Amx {
            amx::release();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, m, n, kp, a, lda, b, ldb, c, ldc, accumulate);
        unreachable!("no bf16 kernel off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    //! AMX tiles through inline assembly (the tile intrinsics are not stable Rust).
    use super::Panel;
    use std::arch::asm;

    /// Asks Linux for the AMX tile state (once per process): `arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, after checking CPUID for AMX-TILE and AMX-BF16.
    pub(super) fn enable() -> bool {
        // CPUID leaf 7 exists on every processor that passed the AVX-512 BF16 check.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(amx_bf16 && amx_tile && cfg!(target_os = "linux")) {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call that only changes this process's permitted xstate.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret,
                 in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    /// The 64-byte tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Loads the tile configuration on this thread (before a product).
    pub(super) unsafe fn configure() {
        asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    }

    /// Releases the tile state (after a product), so that context switches stay cheap.
    pub(super) unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// A 32 × 32 block of `c` (tiles 0–3) over the panel's depth: `a` in tiles 4–5, `b` in 6–7.
    #[inline(always)]
    unsafe fn block2x2(p: Panel) {
        let (sa, sb, sc) = (p.lda * 2, p.ldb * 4, p.ldc * 4);
        let c1 = p.c.add(16);
        let c2 = p.c.add(16 * p.ldc);
        let c3 = c2.add(16);
        if p.load {
            asm!("tileloadd tmm0, [{c0} + {s}*1]", "tileloadd tmm1, [{c1} + {s}*1]",
                 "tileloadd tmm2, [{c2} + {s}*1]", "tileloadd tmm3, [{c3} + {s}*1]",
                 c0 = in(reg) p.c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) sc,
                 options(nostack, readonly));
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        for k in (0..p.kc).step_by(32) {
            let a0 = p.a.add(k);
            let a1 = a0.add(16 * p.lda);
            let b0 = p.b.add(k / 2 * p.ldb * 2);
            let b1 = b0.add(32);
            asm!("tileloadd tmm4, [{a0} + {sa}*1]", "tileloadd tmm6, [{b0} + {sb}*1]",
                 "tdpbf16ps tmm0, tmm4, tmm6",
                 "tileloadd tmm7, [{b1} + {sb}*1]",
                 "tdpbf16ps tmm1, tmm4, tmm7",
                 "tileloadd tmm5, [{a1} + {sa}*1]",
                 "tdpbf16ps tmm2, tmm5, tmm6",
                 "tdpbf16ps tmm3, tmm5, tmm7",
                 a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                 sa = in(reg) sa, sb = in(reg) sb, options(nostack, readonly));
        }
        asm!("tilestored [{c0} + {s}*1], tmm0", "tilestored [{c1} + {s}*1], tmm1",
             "tilestored [{c2} + {s}*1], tmm2", "tilestored [{c3} + {s}*1], tmm3",
             c0 = in(reg) p.c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) sc,
             options(nostack));
    }

    /// A 16 × 16 tile of `c` (tile 0) over the panel's depth.
    #[inline(always)]
    unsafe fn block1x1(p: Panel) {
        let (sa, sb, sc) = (p.lda * 2, p.ldb * 4, p.ldc * 4);
        if p.load {
            asm!("tileloadd tmm0, [{c} + {s}*1]", c = in(reg) p.c, s = in(reg) sc,
                 options(nostack, readonly));
        } else {
            asm!("tilezero tmm0", options(nostack, nomem));
        }
        for k in (0..p.kc).step_by(32) {
            asm!("tileloadd tmm4, [{a} + {sa}*1]", "tileloadd tmm6, [{b} + {sb}*1]",
                 "tdpbf16ps tmm0, tmm4, tmm6",
                 a = in(reg) p.a.add(k), b = in(reg) p.b.add(k / 2 * p.ldb * 2),
                 sa = in(reg) sa, sb = in(reg) sb, options(nostack, readonly));
        }
        asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) p.c, s = in(reg) sc,
             options(nostack));
    }

    /// `m × n` of `c` over one panel: 32 × 32 blocks, 16-wide tiles at the edges. The tile
    /// configuration must be loaded ([`configure`]).
    pub(super) unsafe fn panel(m: usize, n: usize, p: Panel) {
        let mut i = 0;
        while i + 32 <= m {
            let mut j = 0;
            while j + 32 <= n {
                block2x2(p.at(i, j));
                j += 32;
            }
            if j < n {
                block1x1(p.at(i, j));
                block1x1(p.at(i + 16, j));
            }
            i += 32;
        }
        if i < m {
            for j in (0..n).step_by(16) {
                block1x1(p.at(i, j));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! `vdpbf16ps`: each step multiplies a broadcast pair of `a` with 16 pairs of `b`.
    use super::Panel;
    use std::arch::x86_64::*;

    /// Rows of `c` per micro-block.
    const MR: usize = 8;

    /// `MR` rows × `16·NB` columns of `c` over the panel's depth.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block<const NB: usize>(p: Panel) {
        let mut acc = [[_mm512_setzero_ps(); NB]; MR];
        if p.load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (q, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(p.c.add(r * p.ldc + 16 * q));
                }
            }
        }
        for pair in 0..p.kc / 2 {
            let bp = p.b.add(pair * p.ldb * 2);
            let mut bv = [_mm512_setzero_si512(); NB];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(bp.add(32 * q) as *const _);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let ab = (p.a.add(r * p.lda + 2 * pair) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(ab));
                for (v, &bq) in row.iter_mut().zip(&bv) {
                    *v = _mm512_dpbf16_ps(*v, av, std::mem::transmute::<__m512i, __m512bh>(bq));
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, v) in row.iter().enumerate() {
                _mm512_storeu_ps(p.c.add(r * p.ldc + 16 * q), *v);
            }
        }
    }

    /// `m × n` of `c` over one panel: `MR` × 32 blocks, 16 wide at the right edge.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn panel(m: usize, n: usize, p: Panel) {
        for i in (0..m).step_by(MR) {
            let mut j = 0;
            while j + 32 <= n {
                block::<2>(p.at(i, j));
                j += 32;
            }
            if j < n {
                block::<1>(p.at(i, j));
            }
        }
    }
}

/// Runs `work(scratch, item)` for `items` work items on up to `threads` threads (a shared
/// counter, so a core slowed by other processes takes fewer); each thread reuses one
/// `Scratch` for its items.
fn parallel(items: usize, threads: usize, work: impl Fn(&mut Scratch, usize) + Sync) {
    let threads = threads.clamp(1, items.max(1));
    let next = AtomicUsize::new(0);
    let run = || {
        let mut scratch = Scratch::default();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            work(&mut scratch, i);
        }
    };
    if threads == 1 {
        run();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(run);
            }
            run();
        });
    }
}

/// One worker's reusable buffers (large ones would otherwise be mapped and faulted in per item).
#[derive(Default)]
struct Scratch {
    /// The convolution band whose operand `bf16_b` holds.
    band: Option<usize>,
    bf16_a: Vec<u16>,
    bf16_b: Vec<u16>,
    f32_a: Vec<f32>,
    f32_b: Vec<f32>,
}

/// `buf` resized to `len` elements (contents unspecified: callers overwrite them).
fn sized<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    buf.resize(len, T::default());
    &mut buf[..len]
}

/// The layer's packed weight: `cell`'s, or `make` of the f32 weight `w`, kept in `cell` (a layer
/// packs once; two threads racing on the first call both pack, and one copy is kept).
fn packed_once<'a>(
    cell: &'a OnceLock<Packed>,
    w: &Tensor,
    make: impl FnOnce(&[f32]) -> Packed,
) -> Result<&'a Packed> {
    if let Some(p) = cell.get() {
        return Ok(p);
    }
    let wv = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(cell.get_or_init(|| make(&wv)))
}

/// True where a bf16 kernel may replace an f32 CPU product: bf16 scope, CPU, f32, no gradient.
fn applies(ts: &[&Tensor]) -> Option<Kernel> {
    let kernel = active()?;
    let ok = ts
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
        && !super::differentiable::needs_grad(ts);
    ok.then_some(kernel)
}

// ---------------------------------------------------------------------------------------------
// Linear layers.

/// Token rows per work item of a linear layer.
const LINEAR_ROWS: usize = 64;

/// `x · wᵀ + b` through the bf16 kernel inside a CPU bf16 scope (`x: [.., in]`, `w: [out, in]`),
/// or `None` (the caller's f32 path) outside one. `packed` holds `wᵀ` in VNNI after the first
/// call.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    packed: &OnceLock<Packed>,
) -> Result<Option<Tensor>> {
    let mut ts = vec![x, w];
    ts.extend(b);
    let Some(kernel) = applies(&ts) else {
        return Ok(None);
    };
    let (out_dim, in_dim) = w.dims2()?;
    let weights = packed_once(packed, w, |wv| {
        let (kp, np) = (pad(in_dim, 32), pad(out_dim, 16));
        let mut data = vec![0u16; kp / 2 * np * 2];
        to_vnni_t(wv, out_dim, in_dim, in_dim, &mut data, kp, np);
        Packed { n: np, kp, data }
    })?;
    let bias = b.map(|b| b.to_vec1::<f32>()).transpose()?;
    let _p = crate::profile::scope(crate::profile::Op::Matmul);
    let op = LinearOp {
        kernel,
        weights,
        bias,
        out_dim,
    };
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / in_dim.max(1);
    let y = x
        .contiguous()?
        .reshape((rows, in_dim))?
        .apply_op1_no_bwd(&op)?;
    if let Some(last) = dims.last_mut() {
        *last = out_dim;
    }
    Ok(Some(y.reshape(dims)?))
}

struct LinearOp<'a> {
    kernel: Kernel,
    weights: &'a Packed,
    bias: Option<Vec<f32>>,
    out_dim: usize,
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (rows, in_dim) = l.shape().dims2()?;
        let y = self.run(x, rows, in_dim, candle_core::utils::get_num_threads());
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_dim))))
    }
}

impl LinearOp<'_> {
    /// `x (rows × in_dim) · wᵀ + b` on up to `threads` threads.
    fn run(&self, x: &[f32], rows: usize, in_dim: usize, threads: usize) -> Vec<f32> {
        let Packed {
            n: np,
            kp,
            ref data,
        } = *self.weights;
        let out_dim = self.out_dim;
        let mut y = vec![0f32; rows * out_dim];
        let out = SharedMut(y.as_mut_ptr());
        let items = rows.div_ceil(LINEAR_ROWS);
        parallel(items, threads, |scratch, item| {
            let r0 = item * LINEAR_ROWS;
            let m = LINEAR_ROWS.min(rows - r0);
            let mp = pad(m, 16);
            let a = sized(&mut scratch.bf16_a, mp * kp);
            to_rows(&x[r0 * in_dim..], m, in_dim, in_dim, a, mp, kp);
            // SAFETY: rows r0..r0+m of y belong to this item only.
            let dst = unsafe { out.slice(r0 * out_dim, m * out_dim) };
            if mp == m && np == out_dim {
                // Whole tiles: the product goes straight into y.
                // SAFETY: a is m × kp, data kp/2 × np pairs, dst m × np.
                unsafe {
                    gemm(
                        self.kernel,
                        m,
                        np,
                        kp,
                        a.as_ptr(),
                        kp,
                        data.as_ptr(),
                        np,
                        dst.as_mut_ptr(),
                        np,
                        false,
                    )
                };
            } else {
                let c = sized(&mut scratch.f32_a, mp * np);
                // SAFETY: a is mp × kp, data kp/2 × np pairs, c mp × np.
                unsafe {
                    gemm(
                        self.kernel,
                        mp,
                        np,
                        kp,
                        a.as_ptr(),
                        kp,
                        data.as_ptr(),
                        np,
                        c.as_mut_ptr(),
                        np,
                        false,
                    )
                };
                for (d, s) in dst.chunks_exact_mut(out_dim).zip(c.chunks_exact(np)) {
                    d.copy_from_slice(&s[..out_dim]);
                }
            }
            if let Some(b) = &self.bias {
                for d in dst.chunks_exact_mut(out_dim) {
                    for (v, &bv) in d.iter_mut().zip(b) {
                        *v += bv;
                    }
                }
            }
        });
        y
    }
}

// ---------------------------------------------------------------------------------------------
// Convolutions.

/// Output pixels per work item of a convolution (a multiple of 16 after padding).
const CONV_BAND_PIXELS: usize = 256;

/// `conv2d(x, w) + bias` (NCHW, groups 1, dilation 1) through the bf16 kernel inside a CPU bf16
/// scope, or `None` outside one. `packed` holds the weight as bf16 rows after the first call.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    sh: ConvShape,
    packed: &OnceLock<Packed>,
) -> Result<Option<Tensor>> {
    let mut ts = vec![x, w];
    ts.extend(bias);
    let Some(kernel) = applies(&ts) else {
        return Ok(None);
    };
    let k = sh.c_in * sh.kh * sh.kw;
    let weights = packed_once(packed, w, |wv| {
        let (mp, kp) = (pad(sh.c_out, 32), pad(k, 32));
        let mut data = vec![0u16; mp * kp];
        to_rows(wv, sh.c_out, k, k, &mut data, mp, kp);
        Packed { n: mp, kp, data }
    })?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let op = ConvOp {
        kernel,
        weights,
        bias,
        sh,
    };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

struct ConvOp<'a> {
    kernel: Kernel,
    weights: &'a Packed,
    bias: Option<Vec<f32>>,
    sh: ConvShape,
}

impl CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "bf16-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (out, ho, wo) = self.run(x, candle_core::utils::get_num_threads())?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.sh.batch, self.sh.c_out, ho, wo)),
        ))
    }
}

impl ConvOp<'_> {
    /// The NCHW output and its height and width, on up to `threads` threads.
    fn run(&self, x: &[f32], threads: usize) -> Result<(Vec<f32>, usize, usize)> {
        let sh = &self.sh;
        if sh.stride == 0 || sh.h + 2 * sh.padding < sh.kh || sh.w + 2 * sh.padding < sh.kw {
            candle_core::bail!(
                "conv2d: kernel {}×{} does not fit the input {}×{}",
                sh.kh,
                sh.kw,
                sh.h,
                sh.w
            )
        }
        let (ho, wo) = (
            (sh.h + 2 * sh.padding - sh.kh) / sh.stride + 1,
            (sh.w + 2 * sh.padding - sh.kw) / sh.stride + 1,
        );
        let k = sh.c_in * sh.kh * sh.kw;
        let Packed {
            n: mp,
            kp,
            ref data,
        } = *self.weights;
        let (img_in, plane) = (sh.c_in * sh.h * sh.w, ho * wo);
        let mut out = vec![0f32; sh.batch * sh.c_out * plane];
        let dst = SharedMut(out.as_mut_ptr());
        let band = CONV_BAND_PIXELS.div_ceil(wo).clamp(1, ho);
        let bands = ho.div_ceil(band);
        let direct = sh.kh == 1 && sh.kw == 1 && sh.stride == 1 && sh.padding == 0;
        // Few bands (small images): the output channels are split too, so that every thread has
        // work and each reads only its share of the weight. No element's sum depends on it.
        let want = (4 * threads).div_ceil(sh.batch * bands).clamp(1, mp / 32);
        let block = pad(mp.div_ceil(want), 32);
        let blocks = mp.div_ceil(block);
        parallel(sh.batch * bands * blocks, threads, |scratch, item| {
            let (band_item, m0) = (item / blocks, (item % blocks) * block);
            let (b, oy0) = (band_item / bands, (band_item % bands) * band);
            let oy1 = (oy0 + band).min(ho);
            let pixels = (oy1 - oy0) * wo;
            let np = pad(pixels, 16);
            let vnni_len = kp / 2 * np * 2;
            // Consecutive blocks of one band on this thread reuse its im2col.
            if scratch.band != Some(band_item) {
                let img = &x[b * img_in..(b + 1) * img_in];
                let vnni = sized(&mut scratch.bf16_b, vnni_len);
                if direct {
                    to_vnni(&img[oy0 * wo..], k, pixels, plane, vnni, kp, np);
                } else {
                    im2col_vnni(img, sh, oy0, oy1, pixels, vnni, kp, np, &mut scratch.f32_b);
                }
                scratch.band = Some(band_item);
            }
            let rows = block.min(mp - m0);
            let c = sized(&mut scratch.f32_a, rows * np);
            // SAFETY: rows m0..m0+rows of the mp × kp bf16 weight rows, vnni kp/2 × np pairs,
            // c rows × np.
            unsafe {
                gemm(
                    self.kernel,
                    rows,
                    np,
                    kp,
                    data.as_ptr().add(m0 * kp),
                    kp,
                    scratch.bf16_b.as_ptr(),
                    np,
                    c.as_mut_ptr(),
                    np,
                    false,
                )
            };
            for co in m0..(m0 + rows).min(sh.c_out) {
                // SAFETY: this band of output channel `co` of image `b` belongs to this item only.
                let d = unsafe { dst.slice((b * sh.c_out + co) * plane + oy0 * wo, pixels) };
                let r = co - m0;
                d.copy_from_slice(&c[r * np..r * np + pixels]);
                if let Some(bias) = &self.bias {
                    let bv = bias[co];
                    for v in d.iter_mut() {
                        *v += bv;
                    }
                }
            }
        });
        Ok((out, ho, wo))
    }
}

// ---------------------------------------------------------------------------------------------
// Attention.

/// Query rows per work item of the attention.
const ATTN_QUERY_TILE: usize = 128;
/// Key rows per step of the online softmax (a multiple of 32).
const ATTN_KEY_TILE: usize = 512;
/// Pairs per pair row of a key tile's block of kᵀ: a tile plus 16, so that the rows of a tile
/// load are not a power of two apart (they would share cache sets).
const KEY_TILE_LD: usize = ATTN_KEY_TILE + 16;
/// Floats per row of the score tile, for the same reason.
const SCORES_LD: usize = ATTN_KEY_TILE + 16;

/// `softmax(q kᵀ·scale) v` (`q: [n, lq, d]`, `k: [n, lk, d]`, `v: [n, lk, dv]`) with bf16
/// products inside a CPU bf16 scope, or `None` outside one. The scores and the softmax stay f32;
/// the probabilities are rounded to bf16 for `p·v`, as in bf16 flash attention.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let Some(kernel) = applies(&[q, k, v]) else {
        return Ok(None);
    };
    let op = AttentionOp {
        kernel,
        scale: scale as f32,
    };
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &op,
    )?))
}

struct AttentionOp {
    kernel: Kernel,
    scale: f32,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "bf16-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let (n, lq, d, lk, dv) = attention_dims(l1, l2, l3, self.name())?;
        let threads = candle_core::utils::get_num_threads();
        let (dp, lkp, dvp) = (pad(d, 32), pad(lk, 32), pad(dv, 16));
        // kᵀ (d × lk) and v (lk × dv) of every batch entry in VNNI, once. kᵀ is stored in
        // blocks of one key tile, KEY_TILE_LD pairs per pair row: a tile of 16 pair rows of the
        // whole kᵀ would be 16 rows 4·lk bytes apart (256 KiB at 65,536 keys), one cache set
        // and one page each.
        let key_tiles = lk.div_ceil(ATTN_KEY_TILE);
        let kt_block = dp / 2 * KEY_TILE_LD * 2;
        let (kt_len, v_len) = (key_tiles * kt_block, lkp / 2 * dvp * 2);
        let mut kt = vec![0u16; n * kt_len];
        let mut vv = vec![0u16; n * v_len];
        let (kt_ptr, vv_ptr) = (SharedMut(kt.as_mut_ptr()), SharedMut(vv.as_mut_ptr()));
        parallel(n, threads, |_, b| {
            // SAFETY: batch entry b's parts of kt and vv belong to this item only.
            let (ktb, vvb) = unsafe {
                (
                    kt_ptr.slice(b * kt_len, kt_len),
                    vv_ptr.slice(b * v_len, v_len),
                )
            };
            let kb = &k[b * lk * d..(b + 1) * lk * d];
            for (t, block) in ktb.chunks_exact_mut(kt_block).enumerate() {
                let k0 = t * ATTN_KEY_TILE;
                let cols = ATTN_KEY_TILE.min(lk - k0);
                to_vnni_t(
                    &kb[k0 * d..(k0 + cols) * d],
                    cols,
                    d,
                    d,
                    block,
                    dp,
                    KEY_TILE_LD,
                );
            }
            to_vnni(
                &v[b * lk * dv..(b + 1) * lk * dv],
                lk,
                dv,
                dv,
                vvb,
                lkp,
                dvp,
            );
        });
        let mut out = vec![0f32; n * lq * dv];
        let dst = SharedMut(out.as_mut_ptr());
        let tiles = lq.div_ceil(ATTN_QUERY_TILE);
        let (kernel, scale) = (self.kernel, self.scale);
        parallel(n * tiles, threads, |scratch, item| {
            let (b, q0) = (item / tiles, (item % tiles) * ATTN_QUERY_TILE);
            let rows = ATTN_QUERY_TILE.min(lq - q0);
            let rp = pad(rows, 16);
            let Scratch {
                bf16_a,
                bf16_b,
                f32_a,
                f32_b,
                ..
            } = scratch;
            let qa = sized(bf16_a, rp * dp);
            to_rows(&q[(b * lq + q0) * d..], rows, d, d, qa, rp, dp);
            let acc = sized(f32_a, rp * dvp);
            acc.fill(0.0);
            let s = sized(f32_b, rp * SCORES_LD);
            let p = sized(bf16_b, rp * ATTN_KEY_TILE);
            let (mut m, mut l) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
            let (ktb, vvb) = (
                &kt[b * kt_len..(b + 1) * kt_len],
                &vv[b * v_len..(b + 1) * v_len],
            );
            // Worker-thread time of the products and of the softmax (read only while profiling).
            let mut clock = crate::profile::enabled().then(std::time::Instant::now);
            let (mut gemm_ns, mut softmax_ns) = (0u64, 0u64);
            let mut lap = |acc_ns: &mut u64| {
                if let Some(t) = clock.as_mut() {
                    let now = std::time::Instant::now();
                    *acc_ns += (now - *t).as_nanos() as u64;
                    *t = now;
                }
            };
            for k0 in (0..lk).step_by(ATTN_KEY_TILE) {
                let cols = ATTN_KEY_TILE.min(lk - k0);
                let cp = pad(cols, 32);
                // SAFETY: qa is rp × dp bf16 rows; this key tile's block of kᵀ has dp/2 pair rows
                // of KEY_TILE_LD ≥ cp pairs; s holds rp rows of SCORES_LD ≥ cp floats.
                unsafe {
                    gemm(
                        kernel,
                        rp,
                        cp,
                        dp,
                        qa.as_ptr(),
                        dp,
                        ktb.as_ptr().add(k0 / ATTN_KEY_TILE * kt_block),
                        KEY_TILE_LD,
                        s.as_mut_ptr(),
                        SCORES_LD,
                        false,
                    )
                };
                lap(&mut gemm_ns);
                super::online_softmax::step_bf16(
                    s, SCORES_LD, p, cols, cp, rows, &mut m, &mut l, acc, dvp, scale,
                );
                lap(&mut softmax_ns);
                // SAFETY: p is rp × cp bf16 rows, the v block (cp/2 pair rows of dvp pairs) lies
                // inside vvb, acc is rp × dvp.
                unsafe {
                    gemm(
                        kernel,
                        rp,
                        dvp,
                        cp,
                        p.as_ptr(),
                        cp,
                        vvb.as_ptr().add(k0 / 2 * dvp * 2),
                        dvp,
                        acc.as_mut_ptr(),
                        dvp,
                        true,
                    )
                };
                lap(&mut gemm_ns);
            }
            if clock.is_some() {
                crate::profile::add_worker_time(crate::profile::Part::AttentionGemm, gemm_ns);
                crate::profile::add_worker_time(crate::profile::Part::AttentionSoftmax, softmax_ns);
            }
            // SAFETY: rows q0..q0+rows of batch entry b belong to this item only.
            let o = unsafe { dst.slice((b * lq + q0) * dv, rows * dv) };
            for ((orow, arow), &sum) in o.chunks_exact_mut(dv).zip(acc.chunks_exact(dvp)).zip(&l) {
                let inv = 1.0 / sum;
                for (x, &a) in orow.iter_mut().zip(arow) {
                    *x = a * inv;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The product of bf16-rounded operands in f64: what the kernels compute up to f32 sums.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let r = |x: f32| f32::from_bits((bf16_bits(x) as u32) << 16) as f64;
        (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| {
                (0..k)
                    .map(|t| r(a[i * k + t]) * r(b[t * n + j]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    fn kernels() -> Vec<Kernel> {
        let mut ks = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bf16") {
            ks.push(Kernel::Avx512);
            if amx::enable() {
                ks.push(Kernel::Amx);
            }
        }
        if ks.is_empty() {
            eprintln!(
                "SKIPPED: this processor has no bf16 dot-product instructions (avx512_bf16 or AMX)"
            );
        }
        ks
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), half::bf16::from_f32(-2.5).to_bits());
        for i in 0..1000 {
            let x = (i as f32 * 0.7311).sin() * 1e3;
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits());
        }
    }

    #[test]
    fn kernels_match_the_rounded_product() {
        for kernel in kernels() {
            for &(m, n, k) in &[(16, 16, 32), (48, 80, 100), (96, 48, 1100), (32, 32, 64)] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                    .collect();
                let (mp, np, kp) = (pad(m, 16), pad(n, 16), pad(k, 32));
                let mut ab = vec![0u16; mp * kp];
                to_rows(&a, m, k, k, &mut ab, mp, kp);
                let mut bb = vec![0u16; kp / 2 * np * 2];
                to_vnni(&b, k, n, n, &mut bb, kp, np);
                let mut c = vec![1f32; mp * np];
                // SAFETY: sizes as allocated above.
                unsafe {
                    gemm(
                        kernel,
                        mp,
                        np,
                        kp,
                        ab.as_ptr(),
                        kp,
                        bb.as_ptr(),
                        np,
                        c.as_mut_ptr(),
                        np,
                        false,
                    )
                };
                let want = reference(&a, &b, m, n, k);
                let mut worst = 0f32;
                for i in 0..m {
                    for j in 0..n {
                        worst = worst.max((c[i * np + j] - want[i * n + j]).abs());
                    }
                }
                // f32 sums of k products of size ≤ 4: rounding ≤ k·4·2^-23 or so.
                assert!(worst < 1e-3, "{kernel:?} {m}×{n}×{k}: max error {worst}");
                // Accumulate: c += a·b again gives twice the product.
                unsafe {
                    gemm(
                        kernel,
                        mp,
                        np,
                        kp,
                        ab.as_ptr(),
                        kp,
                        bb.as_ptr(),
                        np,
                        c.as_mut_ptr(),
                        np,
                        true,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let e = (c[i * np + j] - 2.0 * want[i * n + j]).abs();
                        assert!(e < 2e-3, "{kernel:?} accumulate {m}×{n}×{k}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_packing_matches_the_plain_one() {
        let (n, k) = (5, 7);
        let src: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let t: Vec<f32> = (0..k * n).map(|i| src[(i % n) * k + i / n]).collect();
        let (kp, np) = (pad(k, 32), pad(n, 16));
        let (mut a, mut b) = (vec![9u16; kp / 2 * np * 2], vec![9u16; kp / 2 * np * 2]);
        to_vnni_t(&src, n, k, k, &mut a, kp, np);
        to_vnni(&t, k, n, n, &mut b, kp, np);
        assert_eq!(a, b);
    }

    fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let s = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / s)
    }

    #[test]
    fn layers_in_a_bf16_scope_stay_near_f32() -> Result<()> {
        if kernels().is_empty() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 37, 48), &dev)?;
        let w = (Tensor::randn(0f32, 1.0, (70, 48), &dev)? / 7.0)?;
        let b = Tensor::randn(0f32, 1.0, 70, &dev)?;
        let f32_lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let want = candle_nn::Module::forward(&f32_lin, &x)?;
        assert!(
            linear(&x, &w, Some(&b), &OnceLock::new())?.is_none(),
            "off outside a scope"
        );
        let _bf16 = scope(true);
        let got = linear(&x, &w, Some(&b), &OnceLock::new())?.expect("in a scope");
        assert!(rel(&got, &want)? < 2e-2, "linear {}", rel(&got, &want)?);

        let xc = Tensor::randn(0f32, 1.0, (2, 12, 9, 11), &dev)?;
        let wc = (Tensor::randn(0f32, 1.0, (20, 12, 3, 3), &dev)? / 10.0)?;
        let bc = Tensor::randn(0f32, 1.0, 20, &dev)?;
        for (stride, padding) in [(1, 1), (2, 1), (1, 0)] {
            let sh = ConvShape {
                batch: 2,
                c_in: 12,
                h: 9,
                w: 11,
                c_out: 20,
                kh: 3,
                kw: 3,
                stride,
                padding,
            };
            let want = xc
                .conv2d(&wc, padding, stride, 1, 1)?
                .broadcast_add(&bc.reshape((1, 20, 1, 1))?)?;
            let got = conv2d(&xc, &wc, Some(&bc), sh, &OnceLock::new())?.expect("in a scope");
            assert!(
                rel(&got, &want)? < 2e-2,
                "conv s{stride} p{padding}: {}",
                rel(&got, &want)?
            );
        }
        let w1 = (Tensor::randn(0f32, 1.0, (20, 12, 1, 1), &dev)? / 3.0)?;
        let sh = ConvShape {
            batch: 2,
            c_in: 12,
            h: 9,
            w: 11,
            c_out: 20,
            kh: 1,
            kw: 1,
            stride: 1,
            padding: 0,
        };
        let want = xc.conv2d(&w1, 0, 1, 1, 1)?;
        let got = conv2d(&xc, &w1, None, sh, &OnceLock::new())?.expect("in a scope");
        assert!(rel(&got, &want)? < 2e-2, "conv 1×1: {}", rel(&got, &want)?);

        let (q, k, v) = (
            Tensor::randn(0f32, 1.0, (3, 200, 40), &dev)?,
            Tensor::randn(0f32, 1.0, (3, 1100, 40), &dev)?,
            Tensor::randn(0f32, 1.0, (3, 1100, 24), &dev)?,
        );
        let scale = 1.0 / (40f64).sqrt();
        let want = super::super::attention::naive_attention(&q, &k, &v, scale)?;
        let got = attention(&q, &k, &v, scale)?.expect("in a scope");
        assert!(rel(&got, &want)? < 2e-2, "attention {}", rel(&got, &want)?);
        assert_eq!(got.dtype(), DType::F32);
        // Keys whose scores jump far above the first tile's (the exponentials are redone with
        // the new maximum and the earlier tiles rescaled), and a last tile of 76 keys. Such sharp
        // scores magnify the rounding of q and k (as in any bf16 attention), so the reference
        // takes the same bf16-rounded inputs.
        let boost = Tensor::cat(
            &[
                Tensor::ones((3, 600, 40), DType::F32, &dev)?,
                (Tensor::ones((3, 500, 40), DType::F32, &dev)? * 40.0)?,
            ],
            1,
        )?;
        let k2 = (&k * &boost)?;
        let r = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let want = super::super::attention::naive_attention(&r(&q)?, &r(&k2)?, &r(&v)?, scale)?;
        let got = attention(&q, &k2, &v, scale)?.expect("in a scope");
        assert!(
            rel(&got, &want)? < 2e-2,
            "attention, rising maxima {}",
            rel(&got, &want)?
        );
        Ok(())
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() -> Result<()> {
        let Some(kernel) = kernels().last().copied() else {
            return Ok(());
        };
        let x: Vec<f32> = (0..2 * 24 * 13 * 11)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0)
            .collect();
        let w = Tensor::randn(0f32, 0.1, (70, 24, 3, 3), &Device::Cpu)?;
        let sh = ConvShape {
            batch: 2,
            c_in: 24,
            h: 13,
            w: 11,
            c_out: 70,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let weights = packed_rows(&w, 70, 24 * 9)?;
        let op = ConvOp {
            kernel,
            weights: &weights,
            bias: None,
            sh,
        };
        let one = op.run(&x, 1)?.0;
        for threads in [2, 3, 8] {
            assert!(one == op.run(&x, threads)?.0, "conv, {threads} threads");
        }
        let wl = Tensor::randn(0f32, 0.1, (50, 24), &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (kp, np) = (pad(24, 32), pad(50, 16));
        let mut data = vec![0u16; kp / 2 * np * 2];
        to_vnni_t(&wl, 50, 24, 24, &mut data, kp, np);
        let packed = Packed { n: np, kp, data };
        let lin = LinearOp {
            kernel,
            weights: &packed,
            bias: None,
            out_dim: 50,
        };
        let rows = x.len() / 24;
        let one = lin.run(&x, rows, 24, 1);
        for threads in [2, 3, 8] {
            assert!(
                one == lin.run(&x, rows, 24, threads),
                "linear, {threads} threads"
            );
        }
        Ok(())
    }

    fn packed_rows(w: &Tensor, m: usize, k: usize) -> Result<Packed> {
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let (mp, kp) = (pad(m, 32), pad(k, 32));
        let mut data = vec![0u16; mp * kp];
        to_rows(&wv, m, k, k, &mut data, mp, kp);
        Ok(Packed { n: mp, kp, data })
    }
}
