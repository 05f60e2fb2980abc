//! Pillow-exact image resampling for 8-bit RGB: the resizers the reference runs.
//!
//! The reference resizes body control frames with PIL `LANCZOS` and CLIP references with PIL
//! `BICUBIC`. Pillow's `ImagingResample` is separable: a horizontal pass into an
//! 8-bit intermediate image, then a vertical pass. Each output sample is a normalised, antialiased
//! filter window (support scaled by the downscale factor) applied in 22-bit fixed point, rounded
//! and clamped to 0–255. Reproducing exactly that, rather than a float resize, keeps our control
//! images and CLIP inputs within rounding of the reference.

/// A Pillow resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (Keys cubic, a = −0.5, support 2).
    Bicubic,
    /// `Image.LANCZOS` (Lanczos-3, support 3).
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output sample: first input index and fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n)
            .map(|x| filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            for v in &mut k {
                *v /= ww;
            }
        }
        let fixed = k
            .iter()
            .map(|&v| {
                let s = v * (1u32 << PRECISION_BITS) as f64;
                (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit RGB (`w × h × 3`) to `out_w × out_h` as Pillow's `Image.resize` does.
/// Equal sizes return a copy, as Pillow does.
pub fn resize_rgb8(
    src: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    const C: usize = 3;
    debug_assert_eq!(src.len(), w * h * C);
    let mut cur = src.to_vec();
    let (mut cw, ch) = (w, h);
    if out_w != w {
        let co = coeffs(w, out_w, filter);
        let mut out = vec![0u8; out_w * h * C];
        for y in 0..h {
            for (xx, (&(xmin, n), k)) in co.bounds.iter().zip(&co.weights).enumerate() {
                for c in 0..C {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kw) in k.iter().enumerate().take(n) {
                        acc += cur[(y * w + xmin + i) * C + c] as i64 * kw as i64;
                    }
                    out[(y * out_w + xx) * C + c] = clip8(acc);
                }
            }
        }
        cur = out;
        cw = out_w;
    }
    if out_h != ch {
        let co = coeffs(ch, out_h, filter);
        let mut out = vec![0u8; cw * out_h * C];
        for (yy, (&(ymin, n), k)) in co.bounds.iter().zip(&co.weights).enumerate() {
            for x in 0..cw {
                for c in 0..C {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kw) in k.iter().enumerate().take(n) {
                        acc += cur[((ymin + i) * cw + x) * C + c] as i64 * kw as i64;
                    }
                    out[(yy * cw + x) * C + c] = clip8(acc);
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> (Vec<u8>, usize, usize) {
        let path = format!(
            "{}/../../tests/fixtures/resample/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .to_rgb8();
        let (w, h) = img.dimensions();
        (img.into_raw(), w as usize, h as usize)
    }

    /// Pillow parity (fixtures by `tests/fixtures/fixtures_resample.py`): exact, byte for byte.
    #[test]
    fn matches_pillow_exactly() {
        let (src, w, h) = load("src.png");
        for (name, filter) in [
            ("lanczos", Filter::Lanczos),
            ("bicubic", Filter::Bicubic),
            ("bilinear", Filter::Bilinear),
        ] {
            let dir = format!(
                "{}/../../tests/fixtures/resample",
                env!("CARGO_MANIFEST_DIR")
            );
            for entry in std::fs::read_dir(&dir).unwrap() {
                let file = entry.unwrap().file_name().into_string().unwrap();
                let Some(size) = file.strip_prefix(&format!("{name}_")) else {
                    continue;
                };
                let (want, ow, oh) = load(&file);
                assert_eq!(size, format!("{ow}x{oh}.png"));
                let got = resize_rgb8(&src, w, h, ow, oh, filter);
                let max = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert_eq!(max, 0, "{file}: max difference {max}");
            }
        }
        assert_eq!(resize_rgb8(&src, w, h, w, h, Filter::Lanczos), src);
    }
}
