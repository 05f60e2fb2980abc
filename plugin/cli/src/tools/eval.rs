//! `anchor eval`: compares rendered frames (`--pred`) with ground truth (`--truth`) frame by frame,
//! matched by file name: PSNR, SSIM, silhouette IoU against the mesh render (`--mesh`) and the
//! seam-flicker ratio of batch-overlapped windows (issue 6, "Evaluation").
//!
//! Definitions (all over 8-bit RGB):
//! - **PSNR**: `10·log10(255² / MSE)` with the MSE over R, G and B of a frame, then the mean of the
//!   per-frame values. A frame identical to its truth is capped at [`PSNR_CAP_DB`].
//! - **SSIM**: Wang et al. 2004: 11×11 Gaussian window (σ 1.5, truncated at 3.5σ), K1 0.01,
//!   K2 0.03, L 255, population (co)variances, computed **per channel and averaged over R, G, B**;
//!   filtering mirrors at the border (`d c b a | a b c d`) and the SSIM map's outer 5 pixels are
//!   left out of the mean. This is scikit-image's `structural_similarity(…, gaussian_weights=True,
//!   sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`, checked against
//!   `tests/fixtures/eval/` (made by `tests/fixtures/fixtures_eval.py`).
//! - **Silhouette IoU**: the mesh silhouette is every pixel whose largest channel exceeds
//!   [`MESH_THRESHOLD`] (renders are on black). The prediction's foreground is every pixel whose
//!   largest channel differs by more than [`FOREGROUND_THRESHOLD`] from the background of its row,
//!   estimated as the per-channel median of the [`BORDER_COLUMNS`] leftmost and rightmost pixels
//!   (studio backgrounds are vertical gradients; the subject is centred and leaves the side borders
//!   mostly free). IoU of an empty union counts as 1.
//! - **Seam flicker**: `d(t) = mean |pred(t+1) − pred(t)|` over consecutive frames (positions in
//!   the sorted listing). Pairs where `t+1` is a multiple of the window stride `W − O` straddle a
//!   window boundary; the ratio of their mean `d` to the mean `d` of all other pairs is 1.0 when
//!   there is no seam. The same ratio of the truth is printed for comparison. With `--mask`, `d(t)`
//!   is taken over the union of the masks of frames `t` and `t+1` (e.g. the face region's flicker).
//! - **`--mask DIR`**: PSNR and SSIM only over pixels where the mask (same file name, luma) is
//!   > 127; frames with an empty mask are left out.
//! - **`--baseline FILE|DIR`**: one still frame scored against every truth frame with the same
//!   PSNR, SSIM and mask: an image file as is, or the per-pixel mean of a folder's frames (the
//!   "mean training frame" baseline; `--write-baseline` saves that mean as PNG). The report adds
//!   the prediction's PSNR gain over it.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{io_err, Result, ToolsError};

/// PSNR of a frame identical to its truth, in dB (instead of +∞, so means stay finite).
pub const PSNR_CAP_DB: f64 = 100.0;
/// A mesh-render pixel belongs to the silhouette when its largest channel exceeds this.
pub const MESH_THRESHOLD: u8 = 16;
/// A prediction pixel is foreground when a channel differs from the row's background by more.
pub const FOREGROUND_THRESHOLD: u8 = 24;
/// Columns at each side of a row that sample the row's background colour.
pub const BORDER_COLUMNS: usize = 4;

const SSIM_SIGMA: f64 = 1.5;
const SSIM_RADIUS: usize = 5; // int(3.5 * 1.5 + 0.5), as scipy.ndimage truncates
const SSIM_K1: f64 = 0.01;
const SSIM_K2: f64 = 0.03;
const DATA_RANGE: f64 = 255.0;

/// An 8-bit RGB frame, rows top to bottom, interleaved channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width·height·3` bytes.
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// Wraps a buffer, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(ToolsError::Input(format!(
                "an RGB {width}x{height} image needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

/// Reads an image file as 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<Rgb8> {
    let img = image::open(path).map_err(|source| ToolsError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let rgb = img.to_rgb8();
    Rgb8::new(rgb.width() as usize, rgb.height() as usize, rgb.into_raw())
}

/// Reads an image file as a mask: luma > 127.
pub fn load_mask(path: &Path) -> Result<(usize, usize, Vec<bool>)> {
    let img = image::open(path).map_err(|source| ToolsError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let l = img.to_luma8();
    let (w, h) = (l.width() as usize, l.height() as usize);
    Ok((w, h, l.into_raw().into_iter().map(|v| v > 127).collect()))
}

/// The PNG/JPEG files of a folder, sorted by name.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn same_size(a: &Rgb8, b: &Rgb8, what: &str) -> Result<()> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(ToolsError::Input(format!(
            "{what}: sizes differ, {}x{} vs {}x{}",
            a.width, a.height, b.width, b.height
        )));
    }
    Ok(())
}

fn check_mask(a: &Rgb8, mask: Option<&[bool]>) -> Result<()> {
    match mask {
        Some(m) if m.len() != a.width * a.height => Err(ToolsError::Input(format!(
            "mask has {} pixels, frames are {}x{}",
            m.len(),
            a.width,
            a.height
        ))),
        _ => Ok(()),
    }
}

/// PSNR in dB over the pixels where `mask` is true (all when `None`); `None` for an empty mask.
pub fn psnr(a: &Rgb8, b: &Rgb8, mask: Option<&[bool]>) -> Result<Option<f64>> {
    same_size(a, b, "psnr")?;
    check_mask(a, mask)?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (p, (pa, pb)) in a
        .data
        .chunks_exact(3)
        .zip(b.data.chunks_exact(3))
        .enumerate()
    {
        if mask.is_some_and(|m| !m[p]) {
            continue;
        }
        for c in 0..3 {
            let d = f64::from(pa[c]) - f64::from(pb[c]);
            sum += d * d;
        }
        n += 3;
    }
    if n == 0 {
        return Ok(None);
    }
    let mse = sum / n as f64;
    Ok(Some(if mse == 0.0 {
        PSNR_CAP_DB
    } else {
        (10.0 * (DATA_RANGE * DATA_RANGE / mse).log10()).min(PSNR_CAP_DB)
    }))
}

fn gaussian_kernel() -> [f64; 2 * SSIM_RADIUS + 1] {
    let mut k = [0.0; 2 * SSIM_RADIUS + 1];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - SSIM_RADIUS as f64;
        *v = (-0.5 * x * x / (SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Mirror index as scipy.ndimage's `reflect` mode (`d c b a | a b c d | d c b a`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Separable Gaussian filtering of a `w×h` plane, mirrored at the border (scipy's `reflect`).
fn blur(src: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let r = k.len() / 2;
    let mut tmp = vec![0.0; w * h];
    let mut padded = vec![0.0; w + 2 * r];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (i, p) in padded.iter_mut().enumerate() {
            *p = row[reflect(i as isize - r as isize, w)];
        }
        for (x, t) in tmp[y * w..(y + 1) * w].iter_mut().enumerate() {
            *t = k
                .iter()
                .zip(&padded[x..x + k.len()])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        for (j, kv) in k.iter().enumerate() {
            let sy = reflect(y as isize + j as isize - r as isize, h);
            for (d, s) in dst.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                *d += kv * s;
            }
        }
    }
    out
}

/// The SSIM map of one channel plane (values in 0..=255).
fn ssim_map(x: &[f64], y: &[f64], w: usize, h: usize) -> Vec<f64> {
    let k = gaussian_kernel();
    let prod = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).collect::<Vec<_>>();
    let ux = blur(x, w, h, &k);
    let uy = blur(y, w, h, &k);
    let uxx = blur(&prod(x, x), w, h, &k);
    let uyy = blur(&prod(y, y), w, h, &k);
    let uxy = blur(&prod(x, y), w, h, &k);
    let c1 = (SSIM_K1 * DATA_RANGE).powi(2);
    let c2 = (SSIM_K2 * DATA_RANGE).powi(2);
    (0..w * h)
        .map(|i| {
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            ((2.0 * mx * my + c1) * (2.0 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        })
        .collect()
}

/// Mean SSIM (per channel, averaged over R, G, B) over the map without its 5-pixel border, and
/// where `mask` is true; `None` when no pixel is left.
pub fn ssim(a: &Rgb8, b: &Rgb8, mask: Option<&[bool]>) -> Result<Option<f64>> {
    same_size(a, b, "ssim")?;
    check_mask(a, mask)?;
    let (w, h) = (a.width, a.height);
    let win = 2 * SSIM_RADIUS + 1;
    if w < win || h < win {
        return Err(ToolsError::Input(format!(
            "ssim needs images of at least {win}x{win}, got {w}x{h}"
        )));
    }
    let mut total = 0.0;
    let mut count = 0usize;
    for c in 0..3 {
        let plane = |img: &Rgb8| -> Vec<f64> {
            img.data.chunks_exact(3).map(|p| f64::from(p[c])).collect()
        };
        let map = ssim_map(&plane(a), &plane(b), w, h);
        for y in SSIM_RADIUS..h - SSIM_RADIUS {
            for x in SSIM_RADIUS..w - SSIM_RADIUS {
                let i = y * w + x;
                if mask.is_some_and(|m| !m[i]) {
                    continue;
                }
                total += map[i];
                count += 1;
            }
        }
    }
    Ok((count > 0).then(|| total / count as f64))
}

/// Silhouette of a mesh render on black: the largest channel exceeds [`MESH_THRESHOLD`].
pub fn mesh_silhouette(img: &Rgb8) -> Vec<bool> {
    img.data
        .chunks_exact(3)
        .map(|p| p.iter().any(|&v| v > MESH_THRESHOLD))
        .collect()
}

/// Foreground of a frame on a studio background whose colour varies by row only (see the module
/// doc for the estimate).
pub fn foreground(img: &Rgb8) -> Vec<bool> {
    let (w, h) = (img.width, img.height);
    let mut out = vec![false; w * h];
    if w == 0 {
        return out;
    }
    let cols = BORDER_COLUMNS.min(w.div_ceil(2)).max(1);
    let mut samples: Vec<u8> = Vec::with_capacity(2 * cols);
    for y in 0..h {
        let row = &img.data[y * w * 3..(y + 1) * w * 3];
        let mut bg = [0u8; 3];
        for (c, b) in bg.iter_mut().enumerate() {
            samples.clear();
            samples.extend((0..cols).map(|x| row[x * 3 + c]));
            samples.extend((w - cols..w).map(|x| row[x * 3 + c]));
            samples.sort_unstable();
            *b = samples[samples.len() / 2];
        }
        for x in 0..w {
            let p = &row[x * 3..x * 3 + 3];
            out[y * w + x] = (0..3).any(|c| p[c].abs_diff(bg[c]) > FOREGROUND_THRESHOLD);
        }
    }
    out
}

/// Intersection over union of two masks; 1 when both are empty.
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&p, &q) in a.iter().zip(b) {
        inter += usize::from(p && q);
        union += usize::from(p || q);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Mean absolute difference of two frames over all 8-bit values.
pub fn mean_abs_diff(a: &Rgb8, b: &Rgb8) -> Result<f64> {
    Ok(mean_abs_diff_masked(a, b, None)?.unwrap_or(0.0))
}

/// Mean absolute difference over the pixels where `mask` is true (all when `None`); `None` for
/// an empty mask.
pub fn mean_abs_diff_masked(a: &Rgb8, b: &Rgb8, mask: Option<&[bool]>) -> Result<Option<f64>> {
    same_size(a, b, "frame difference")?;
    check_mask(a, mask)?;
    let (mut s, mut n) = (0u64, 0usize);
    for (px, (p, q)) in a
        .data
        .chunks_exact(3)
        .zip(b.data.chunks_exact(3))
        .enumerate()
    {
        if mask.is_some_and(|m| !m[px]) {
            continue;
        }
        s += p
            .iter()
            .zip(q)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum::<u64>();
        n += 3;
    }
    Ok((n > 0 || mask.is_none()).then(|| s as f64 / n.max(1) as f64))
}

/// The seam-flicker ratio and its parts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Flicker {
    /// Mean boundary difference / mean inside difference; `None` without pairs of either kind
    /// (or with no motion inside windows).
    pub ratio: Option<f64>,
    /// Mean absolute difference of pairs straddling a window boundary.
    pub boundary_mad: Option<f64>,
    /// Mean absolute difference of pairs inside windows.
    pub inside_mad: Option<f64>,
    /// Number of boundary pairs.
    pub boundary_pairs: usize,
    /// Number of inside pairs.
    pub inside_pairs: usize,
}

/// Checks a window/overlap pair and returns the stride `W − O`.
pub fn window_stride(window: usize, overlap: usize) -> Result<usize> {
    if window == 0 || overlap >= window {
        return Err(ToolsError::Input(format!(
            "--window must be >= 1 and --overlap < --window, got window {window}, overlap {overlap}"
        )));
    }
    Ok(window - overlap)
}

/// Seam flicker from consecutive differences: `diffs[t]` = difference of frames `t` and `t+1`
/// (NaN: no pixels compared, left out).
pub fn seam_flicker(diffs: &[f64], window: usize, overlap: usize) -> Result<Flicker> {
    let stride = window_stride(window, overlap)?;
    let (mut bs, mut bn, mut is, mut inn) = (0.0, 0usize, 0.0, 0usize);
    // NaN marks a pair without pixels to compare (an empty mask): it is left out.
    for (t, &d) in diffs.iter().enumerate().filter(|(_, d)| !d.is_nan()) {
        if (t + 1) % stride == 0 {
            bs += d;
            bn += 1;
        } else {
            is += d;
            inn += 1;
        }
    }
    let boundary_mad = (bn > 0).then(|| bs / bn as f64);
    let inside_mad = (inn > 0).then(|| is / inn as f64);
    let ratio = match (boundary_mad, inside_mad) {
        (Some(b), Some(i)) if i > 0.0 => Some(b / i),
        _ => None,
    };
    Ok(Flicker {
        ratio,
        boundary_mad,
        inside_mad,
        boundary_pairs: bn,
        inside_pairs: inn,
    })
}

/// `anchor eval` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Rendered frames (PNG/JPEG), sorted by name.
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground-truth frames with the same file names.
    #[arg(long)]
    pub truth: PathBuf,
    /// Frames per window used for the seam-flicker metric.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Frames shared by consecutive windows.
    #[arg(long, default_value_t = 4)]
    pub overlap: usize,
    /// Masks (same file names, luma > 127 = inside) restricting PSNR and SSIM.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Mesh renders (same file names, on black) for the silhouette IoU.
    #[arg(long)]
    pub mesh: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Threads comparing frames [available cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// A still baseline scored like the prediction: an image, or a folder whose per-pixel mean
    /// frame is used (e.g. the training frames).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Save the baseline frame (the mean of `--baseline DIR`) as PNG to this file.
    #[arg(long, requires = "baseline")]
    pub write_baseline: Option<PathBuf>,
}

/// The still-frame baseline's scores.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BaselineReport {
    /// The file or folder it came from.
    pub source: String,
    /// Frames averaged into it (1 for an image file).
    pub frames_averaged: usize,
    /// Mean PSNR in dB against the truth.
    pub psnr_db: Option<f64>,
    /// Mean SSIM against the truth.
    pub ssim: Option<f64>,
}

/// What `anchor eval` measures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalReport {
    /// Frames compared.
    pub frames: usize,
    /// Frames with a non-empty mask (all frames without `--mask`).
    pub frames_scored: usize,
    /// Mean PSNR in dB.
    pub psnr_db: Option<f64>,
    /// Mean SSIM.
    pub ssim: Option<f64>,
    /// How SSIM combines channels.
    pub ssim_mode: &'static str,
    /// Mean silhouette IoU against `--mesh`.
    pub silhouette_iou: Option<f64>,
    /// Smallest per-frame silhouette IoU.
    pub silhouette_iou_min: Option<f64>,
    /// Window of the flicker metric.
    pub window: usize,
    /// Overlap of the flicker metric.
    pub overlap: usize,
    /// Seam flicker of the prediction.
    pub flicker: Flicker,
    /// The same ratio measured on the truth.
    pub flicker_truth: Flicker,
    /// The `--baseline` frame's scores.
    pub baseline: Option<BaselineReport>,
    /// `psnr_db` minus the baseline's PSNR.
    pub psnr_gain_db: Option<f64>,
}

#[derive(Default, Clone)]
struct FrameScore {
    psnr: Option<f64>,
    ssim: Option<f64>,
    iou: Option<f64>,
    pred_diff: Option<f64>,
    truth_diff: Option<f64>,
    base_psnr: Option<f64>,
    base_ssim: Option<f64>,
}

/// The per-pixel mean (rounded) of equally sized frames; `None` for no frames.
pub fn mean_frame(frames: &[Rgb8]) -> Result<Option<Rgb8>> {
    let Some(first) = frames.first() else {
        return Ok(None);
    };
    let mut sum = vec![0u64; first.data.len()];
    for (i, f) in frames.iter().enumerate() {
        same_size(first, f, &format!("baseline frame {i}"))?;
        for (s, &v) in sum.iter_mut().zip(&f.data) {
            *s += u64::from(v);
        }
    }
    let n = frames.len() as u64;
    let data = sum.iter().map(|&s| ((s + n / 2) / n) as u8).collect();
    Rgb8::new(first.width, first.height, data).map(Some)
}

/// Loads `--baseline`: an image file, or the mean of a folder's frames.
fn load_baseline(path: &Path) -> Result<(Rgb8, usize)> {
    if path.is_file() {
        return Ok((load_rgb(path)?, 1));
    }
    let files = list_frames(path)?;
    let frames = files
        .iter()
        .map(|p| load_rgb(p))
        .collect::<Result<Vec<_>>>()?;
    let mean = mean_frame(&frames)?.ok_or_else(|| {
        ToolsError::Input(format!(
            "--baseline {} holds no PNG/JPEG frames",
            path.display()
        ))
    })?;
    Ok((mean, frames.len()))
}

fn partner(dir: &Path, name: &std::ffi::OsStr, what: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        return Err(ToolsError::Input(format!(
            "{what} {} has no frame {}",
            dir.display(),
            name.to_string_lossy()
        )));
    }
    Ok(p)
}

fn score_frame(
    a: &EvalArgs,
    preds: &[PathBuf],
    i: usize,
    baseline: Option<&Rgb8>,
) -> Result<FrameScore> {
    let name = preds[i].file_name().unwrap_or_default();
    let pred = load_rgb(&preds[i])?;
    let truth = load_rgb(&partner(&a.truth, name, "--truth")?)?;
    same_size(&pred, &truth, &name.to_string_lossy())?;
    let mask = match &a.mask {
        Some(dir) => {
            let (w, h, m) = load_mask(&partner(dir, name, "--mask")?)?;
            if (w, h) != (pred.width, pred.height) {
                return Err(ToolsError::Input(format!(
                    "mask {} is {w}x{h}, frames are {}x{}",
                    name.to_string_lossy(),
                    pred.width,
                    pred.height
                )));
            }
            Some(m)
        }
        None => None,
    };
    let mut s = FrameScore {
        psnr: psnr(&pred, &truth, mask.as_deref())?,
        ssim: ssim(&pred, &truth, mask.as_deref())?,
        ..FrameScore::default()
    };
    if let Some(base) = baseline {
        same_size(base, &truth, "--baseline")?;
        s.base_psnr = psnr(base, &truth, mask.as_deref())?;
        s.base_ssim = ssim(base, &truth, mask.as_deref())?;
    }
    if let Some(dir) = &a.mesh {
        let mesh = load_rgb(&partner(dir, name, "--mesh")?)?;
        same_size(&pred, &mesh, &name.to_string_lossy())?;
        s.iou = Some(iou(&foreground(&pred), &mesh_silhouette(&mesh)));
    }
    if let Some(next) = preds.get(i + 1) {
        let next_name = next.file_name().unwrap_or_default();
        // With --mask, over the union of both frames' masks (the region as it moves).
        let union = match (&a.mask, &mask) {
            (Some(dir), Some(m)) => {
                let (_, _, n) = load_mask(&partner(dir, next_name, "--mask")?)?;
                Some(m.iter().zip(&n).map(|(&x, &y)| x || y).collect::<Vec<_>>())
            }
            _ => None,
        };
        let next_pred = load_rgb(next)?;
        s.pred_diff = mean_abs_diff_masked(&pred, &next_pred, union.as_deref())?;
        let next_truth = load_rgb(&partner(&a.truth, next_name, "--truth")?)?;
        s.truth_diff = mean_abs_diff_masked(&truth, &next_truth, union.as_deref())?;
    }
    Ok(s)
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Compares the folders and returns the metrics.
pub fn evaluate(a: &EvalArgs) -> Result<EvalReport> {
    window_stride(a.window, a.overlap)?;
    let preds = list_frames(&a.pred)?;
    if preds.is_empty() {
        return Err(ToolsError::Input(format!(
            "--pred {} holds no PNG/JPEG frames",
            a.pred.display()
        )));
    }
    let baseline = a.baseline.as_deref().map(load_baseline).transpose()?;
    if let (Some((frame, _)), Some(out)) = (&baseline, &a.write_baseline) {
        let img =
            image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.data.clone())
                .ok_or_else(|| {
                    ToolsError::Input("baseline frame buffer has the wrong size".into())
                })?;
        img.save(out).map_err(|source| ToolsError::Image {
            path: out.clone(),
            source,
        })?;
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, preds.len());
    let next = AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(
        std::iter::repeat_with(|| None::<Result<FrameScore>>)
            .take(preds.len())
            .collect::<Vec<_>>(),
    );
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= preds.len() {
                    break;
                }
                let r = score_frame(a, &preds, i, baseline.as_ref().map(|(f, _)| f));
                let failed = r.is_err();
                results.lock()[i] = Some(r);
                if failed {
                    // Stop the other workers early; the first error is reported below.
                    next.store(preds.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    let mut scores = Vec::with_capacity(preds.len());
    for r in results.into_inner() {
        match r {
            Some(r) => scores.push(r?),
            None => break,
        }
    }
    if scores.len() != preds.len() {
        return Err(ToolsError::Input("evaluation stopped early".into()));
    }
    // One entry per consecutive pair (the last frame has none); NaN where a mask was empty.
    let pairs = &scores[..scores.len() - 1];
    let pred_diffs: Vec<f64> = pairs
        .iter()
        .map(|s| s.pred_diff.unwrap_or(f64::NAN))
        .collect();
    let truth_diffs: Vec<f64> = pairs
        .iter()
        .map(|s| s.truth_diff.unwrap_or(f64::NAN))
        .collect();
    let ious: Vec<f64> = scores.iter().filter_map(|s| s.iou).collect();
    let psnr_db = mean(scores.iter().filter_map(|s| s.psnr));
    let baseline = baseline.map(|(_, n)| BaselineReport {
        source: a
            .baseline
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        frames_averaged: n,
        psnr_db: mean(scores.iter().filter_map(|s| s.base_psnr)),
        ssim: mean(scores.iter().filter_map(|s| s.base_ssim)),
    });
    let psnr_gain_db = match (psnr_db, baseline.as_ref().and_then(|b| b.psnr_db)) {
        (Some(p), Some(b)) => Some(p - b),
        _ => None,
    };
    Ok(EvalReport {
        frames: scores.len(),
        frames_scored: scores.iter().filter(|s| s.psnr.is_some()).count(),
        psnr_db,
        ssim: mean(scores.iter().filter_map(|s| s.ssim)),
        ssim_mode: "per-channel RGB mean, Gaussian 11x11 sigma 1.5",
        silhouette_iou: mean(ious.iter().copied()),
        silhouette_iou_min: ious.iter().copied().reduce(f64::min),
        window: a.window,
        overlap: a.overlap,
        flicker: seam_flicker(&pred_diffs, a.window, a.overlap)?,
        flicker_truth: seam_flicker(&truth_diffs, a.window, a.overlap)?,
        baseline,
        psnr_gain_db,
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// The report as a two-column table.
pub fn table(r: &EvalReport) -> String {
    let mut rows = vec![
        (
            "frames".to_string(),
            format!("{} ({} scored)", r.frames, r.frames_scored),
        ),
        ("PSNR (dB)".into(), fmt_opt(r.psnr_db, 3)),
        (
            "SSIM".into(),
            format!("{} ({})", fmt_opt(r.ssim, 4), r.ssim_mode),
        ),
    ];
    if r.silhouette_iou.is_some() {
        rows.push((
            "silhouette IoU".into(),
            format!(
                "{} (min {})",
                fmt_opt(r.silhouette_iou, 4),
                fmt_opt(r.silhouette_iou_min, 4)
            ),
        ));
    }
    rows.push((
        format!("seam flicker W{}/O{}", r.window, r.overlap),
        format!(
            "{} ({} boundary / {} inside pairs; truth {})",
            fmt_opt(r.flicker.ratio, 3),
            r.flicker.boundary_pairs,
            r.flicker.inside_pairs,
            fmt_opt(r.flicker_truth.ratio, 3)
        ),
    ));
    if let Some(b) = &r.baseline {
        rows.push((
            "baseline PSNR (dB)".into(),
            format!(
                "{} (SSIM {}; {} frame(s) of {}); gain {} dB",
                fmt_opt(b.psnr_db, 3),
                fmt_opt(b.ssim, 4),
                b.frames_averaged,
                b.source,
                fmt_opt(r.psnr_gain_db, 3)
            ),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// `anchor eval`: prints the table and writes `--json`.
pub fn run(a: &EvalArgs) -> Result<()> {
    let report = evaluate(a)?;
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| ToolsError::Input(format!("cannot serialise the report: {e}")))?;
        let tmp = path.with_extension("partial.json");
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/eval")
            .join(name)
    }

    fn pattern(w: usize, h: usize) -> Rgb8 {
        let data = (0..w * h * 3)
            .map(|i| (40 + (i * 37 + i / 7) % 170) as u8)
            .collect();
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn psnr_of_known_noise_level() -> Result<()> {
        // ±10 on every value: MSE 100, PSNR = 10·log10(255²/100) = 28.1308 dB.
        let a = pattern(20, 16);
        let mut b = a.clone();
        for (i, v) in b.data.iter_mut().enumerate() {
            *v = if i % 2 == 0 { *v + 10 } else { *v - 10 };
        }
        let p = psnr(&a, &b, None)?.unwrap_or(f64::NAN);
        assert!((p - 28.130_803_608_679_1).abs() < 1e-9, "psnr {p}");
        assert_eq!(psnr(&a, &a, None)?, Some(PSNR_CAP_DB));
        // Only the masked pixels count: noise outside the mask is ignored.
        let mask: Vec<bool> = (0..20 * 16).map(|p| p < 100).collect();
        let mut c = a.clone();
        c.data[300 * 3] = c.data[300 * 3].wrapping_add(50);
        assert_eq!(psnr(&a, &c, Some(&mask))?, Some(PSNR_CAP_DB));
        assert_eq!(psnr(&a, &c, Some(&[false; 320]))?, None);
        Ok(())
    }

    #[test]
    fn ssim_identical_is_one_and_matches_skimage() -> Result<()> {
        let a = load_rgb(&fixture("a.png"))?;
        let b = load_rgb(&fixture("b.png"))?;
        let s = ssim(&a, &a, None)?.unwrap_or(f64::NAN);
        assert!((s - 1.0).abs() < 1e-12, "ssim(a, a) {s}");
        let text = std::fs::read_to_string(fixture("expected.json"))
            .map_err(io_err(&fixture("expected.json")))?;
        let expected: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ToolsError::Input(e.to_string()))?;
        let want = expected["ssim_per_channel_mean"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let got = ssim(&a, &b, None)?.unwrap_or(f64::NAN);
        eprintln!(
            "ssim {got:.12} vs skimage {want:.12}: |diff| {:.2e}",
            (got - want).abs()
        );
        assert!((got - want).abs() < 1e-4, "ssim {got} vs skimage {want}");
        let want_psnr = expected["psnr_db"].as_f64().unwrap_or(f64::NAN);
        let got_psnr = psnr(&a, &b, None)?.unwrap_or(f64::NAN);
        assert!(
            (got_psnr - want_psnr).abs() < 1e-9,
            "psnr {got_psnr} vs {want_psnr}"
        );
        Ok(())
    }

    #[test]
    fn reflect_matches_scipy_mode() {
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, vec![2, 1, 0, 0, 1, 2, 3, 4, 4, 3, 2]);
    }

    fn ramp(t: usize) -> Rgb8 {
        Rgb8 {
            width: 8,
            height: 8,
            data: vec![(10 + 2 * t) as u8; 8 * 8 * 3],
        }
    }

    #[test]
    fn flicker_is_one_for_uniform_motion_and_detects_a_seam() -> Result<()> {
        // 40 frames brightening by 2 per frame: every difference is 2.
        let frames: Vec<Rgb8> = (0..40).map(ramp).collect();
        let diffs = frames
            .windows(2)
            .map(|p| mean_abs_diff(&p[0], &p[1]))
            .collect::<Result<Vec<_>>>()?;
        let f = seam_flicker(&diffs, 16, 4)?;
        assert_eq!(f.ratio, Some(1.0));
        // Stride 12: pairs (11,12), (23,24), (35,36).
        assert_eq!((f.boundary_pairs, f.inside_pairs), (3, 36));
        // A jump of 8 more at each window start: boundary diff 10 vs inside 2.
        let seamed: Vec<Rgb8> = (0..40)
            .map(|t| {
                let mut f = ramp(t);
                let jump = (t / 12) as u8 * 8;
                f.data.iter_mut().for_each(|v| *v += jump);
                f
            })
            .collect();
        let diffs = seamed
            .windows(2)
            .map(|p| mean_abs_diff(&p[0], &p[1]))
            .collect::<Result<Vec<_>>>()?;
        assert_eq!(seam_flicker(&diffs, 16, 4)?.ratio, Some(5.0));
        // Frame-wise windows: every pair is a boundary, no ratio.
        assert_eq!(seam_flicker(&diffs, 1, 0)?.ratio, None);
        assert!(seam_flicker(&diffs, 4, 4).is_err());
        Ok(())
    }

    #[test]
    fn foreground_and_iou_on_a_gradient_background() {
        let (w, h) = (32, 20);
        let mut img = Rgb8 {
            width: w,
            height: h,
            data: vec![0; w * h * 3],
        };
        let mut mesh = img.clone();
        for y in 0..h {
            for x in 0..w {
                let inside = (10..22).contains(&x) && (5..15).contains(&y);
                let bg = [100 + 4 * y as u8, 110 + 3 * y as u8, 140];
                let px = if inside { [40, 30, 90] } else { bg };
                img.data[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&px);
                let m = if inside { [120, 130, 160] } else { [0, 0, 0] };
                mesh.data[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&m);
            }
        }
        let fg = foreground(&img);
        assert_eq!(fg.iter().filter(|&&v| v).count(), 12 * 10);
        assert_eq!(iou(&fg, &mesh_silhouette(&mesh)), 1.0);
        let half: Vec<bool> = mesh_silhouette(&mesh)
            .iter()
            .enumerate()
            .map(|(i, &v)| v && i % w < 16)
            .collect();
        assert_eq!(iou(&fg, &half), 60.0 / 120.0);
    }
}
