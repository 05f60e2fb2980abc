//! The loss log: `loss.csv` (`step,loss,grad_norm,seconds`) appended after every step and
//! rewritten from the checkpoint's history on resume, and `loss.png`, a plot of the raw loss
//! (grey) and its moving average (blue) drawn with the `image` crate, log-scaled in y.
use std::io::Write;
use std::path::Path;

use super::checkpoint::LossRow;
use super::{io_err, Result, TrainError};

/// The CSV header.
pub const CSV_HEADER: &str = "step,loss,grad_norm,seconds";

fn row(r: &LossRow) -> String {
    format!("{},{},{},{:.3}", r.step, r.loss, r.grad_norm, r.seconds)
}

/// Rewrites `path` with `rows` (through a temporary file, then a rename).
pub fn write_csv(path: &Path, rows: &[LossRow]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&row(r));
        s.push('\n');
    }
    let tmp = path.with_extension("csv.partial");
    std::fs::write(&tmp, s).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Appends one row to `path`.
pub fn append_csv(path: &Path, r: &LossRow) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{}", row(r)).map_err(io_err(path))
}

/// Reads the `loss` column of a CSV written by [`write_csv`] / [`append_csv`].
pub fn read_csv_losses(path: &Path) -> Result<Vec<(usize, f32)>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split(',');
            let bad = || TrainError::Data(format!("{}: bad row {l:?}", path.display()));
            let step = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let loss = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Ok((step, loss))
        })
        .collect()
}

fn line(img: &mut image::RgbImage, a: (i64, i64), b: (i64, i64), c: [u8; 3]) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
    let (sx, sy) = (
        if a.0 < b.0 { 1 } else { -1 },
        if a.1 < b.1 { 1 } else { -1 },
    );
    let (mut x, mut y, mut err) = (a.0, a.1, dx + dy);
    loop {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
        if x == b.0 && y == b.1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Draws `loss.png` (640×360): raw loss in grey, the moving average over `max(1, n/20)` steps
/// in blue, y on a log scale between the smallest and largest loss; grid lines at each decade
/// and at every tenth of the steps.
pub fn write_plot(path: &Path, rows: &[LossRow]) -> Result<()> {
    const W: u32 = 640;
    const H: u32 = 360;
    const M: i64 = 24;
    let mut img = image::RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255]));
    let pts: Vec<(usize, f64)> = rows
        .iter()
        .filter(|r| r.loss.is_finite() && r.loss > 0.0)
        .map(|r| (r.step, f64::from(r.loss).log10()))
        .collect();
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        let (lo, hi) = if hi - lo < 1e-6 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        };
        let (s0, s1) = (first.0 as f64, (last.0.max(first.0 + 1)) as f64);
        let px = |s: f64| M + ((s - s0) / (s1 - s0) * (W as f64 - 2.0 * M as f64)) as i64;
        let py =
            |v: f64| H as i64 - M - ((v - lo) / (hi - lo) * (H as f64 - 2.0 * M as f64)) as i64;
        let grid = [230, 230, 230];
        for d in (lo.floor() as i64)..=(hi.ceil() as i64) {
            let y = py(d as f64);
            line(&mut img, (M, y), (W as i64 - M, y), grid);
        }
        for i in 0..=10 {
            let x = px(s0 + (s1 - s0) * f64::from(i) / 10.0);
            line(&mut img, (x, M), (x, H as i64 - M), grid);
        }
        let axis = [0, 0, 0];
        line(
            &mut img,
            (M, H as i64 - M),
            (W as i64 - M, H as i64 - M),
            axis,
        );
        line(&mut img, (M, M), (M, H as i64 - M), axis);
        let to_px = |p: &(usize, f64)| (px(p.0 as f64), py(p.1));
        for w in pts.windows(2) {
            line(&mut img, to_px(&w[0]), to_px(&w[1]), [170, 170, 170]);
        }
        let k = (pts.len() / 20).max(1);
        let avg: Vec<(usize, f64)> = (0..pts.len())
            .map(|i| {
                let a = i.saturating_sub(k - 1);
                let mean = pts[a..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - a) as f64;
                (pts[i].0, mean)
            })
            .collect();
        for w in avg.windows(2) {
            line(&mut img, to_px(&w[0]), to_px(&w[1]), [20, 60, 200]);
        }
    }
    let tmp = path.with_extension("partial.png");
    img.save(&tmp)
        .map_err(|e| TrainError::Data(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
