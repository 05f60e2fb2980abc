//! Plates of any shape and the silhouette matte (issue 16), through the bundle in `ofx-render`
//! with the tiny test model: a 16:9 mesh clip (96×54) renders at the Source's size in each
//! framing, with the content where the framing puts it, and the silhouette alpha is the
//! engine's matte of the mesh with the colour premultiplied by it.
//!
//! The model is deterministic, so each framing is checked against a render of a square plate
//! the test frames itself: `fit` of the 96×54 plate is the 96×96 black-padded plate's render,
//! centre rows; `region` is the render of the region's crop, placed back, black and transparent
//! around it; `squash` is the render of the plate resized to the working square (PIL LANCZOS),
//! resized back. Bit-exact: the same control pixels go through the same engine.
//!
//! Settings: 64² working resolution, 2 DDIM steps, window 2, overlap 0, 4 frames, seed 42.

mod common;

use std::path::{Path, PathBuf};

use anchor_engine::framing::{silhouette_matte, SILHOUETTE_THRESHOLD};
use anchor_engine::resample::{resize_rgb8, Filter};
use common::TempDir;
use image::{Rgb, RgbImage, RgbaImage};

const LEN: usize = 4;
const RES: u32 = 64;
/// The 16:9 plate.
const W: u32 = 96;
const H: u32 = 54;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A mesh-render-like 16:9 frame: black background, a shaded body and head that move.
fn mesh_frame(n: usize) -> RgbImage {
    let n = n as f32;
    RgbImage::from_fn(W, H, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let cx = 40.0 + 6.0 * n;
        let body = ((xf - cx) / 11.0).powi(2) + ((yf - 36.0) / 16.0).powi(2);
        let head = ((xf - cx).powi(2) + (yf - 14.0).powi(2)).sqrt();
        if body < 1.0 {
            let shade = (210.0 - 90.0 * body) as u8;
            Rgb([shade, (shade as f32 * 0.9) as u8, 150])
        } else if head < 7.0 {
            Rgb([230, (180.0 - head * 8.0) as u8, 120])
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Writes `frames` as `mesh_0000.png` … into a new directory.
fn write_clip(tag: &str, frames: impl Iterator<Item = RgbImage>) -> TempDir {
    let dir = TempDir::new(tag);
    for (n, f) in frames.enumerate() {
        f.save(dir.join(&format!("mesh_{n:04}.png")))
            .expect("write mesh frame");
    }
    dir
}

/// `img` on a black `side × side` square at (`x`, `y`) (the square's top-left in `img` pixels).
fn on_square(img: &RgbImage, x: i64, y: i64, side: u32) -> RgbImage {
    RgbImage::from_fn(side, side, |sx, sy| {
        let (px, py) = (sx as i64 + x, sy as i64 + y);
        if (0..img.width() as i64).contains(&px) && (0..img.height() as i64).contains(&py) {
            *img.get_pixel(px as u32, py as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Renders the clip in `input` with the tiny model and `extra` parameters; returns the frames
/// and the plugin's log.
fn render(input: &Path, extra: &[&str]) -> (Vec<RgbaImage>, String) {
    let out = TempDir::new("framing-out");
    let mut args: Vec<String> = vec![
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--appearance".into(),
        fixtures().join("photo.png").display().to_string(),
    ];
    for p in [
        format!("modelFolder={}", fixtures().join("tiny").display()),
        format!("resolution={RES}"),
        "steps=2".into(),
        "window=2".into(),
        "overlap=0".into(),
        "seed=42".into(),
        "device=CPU".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    {
        args.push("--param".into());
        args.push(p);
    }
    let run = common::ofx_render_logged(&args, &[]);
    assert_eq!(
        run.code,
        Some(0),
        "{extra:?}: stdout {}\nstderr {}\nlog tail {}",
        run.stdout,
        run.stderr,
        run.log
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let frames = (0..LEN)
        .map(|n| {
            let path = out.join(&format!("mesh_{n:04}.png"));
            image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgba8()
        })
        .collect();
    eprintln!("{extra:?}: {:.1} s", run.seconds);
    (frames, run.log)
}

/// The RGB bytes of an RGBA image.
fn rgb_of(img: &RgbaImage) -> Vec<u8> {
    img.pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect()
}

/// Asserts `got` holds `want` (RGB) at (`x0`, `y0`) with alpha 255, and black with alpha 0
/// everywhere else.
fn assert_placed(got: &RgbaImage, want: &RgbImage, x0: u32, y0: u32, what: &str) {
    for (x, y, p) in got.enumerate_pixels() {
        let inside = (x0..x0 + want.width()).contains(&x) && (y0..y0 + want.height()).contains(&y);
        if inside {
            let w = want.get_pixel(x - x0, y - y0).0;
            assert_eq!(
                p.0,
                [w[0], w[1], w[2], 255],
                "{what}: pixel ({x}, {y}) inside"
            );
        } else {
            assert_eq!(p.0, [0, 0, 0, 0], "{what}: pixel ({x}, {y}) outside");
        }
    }
}

/// The RGB frames of a square render, as `RgbImage`s.
fn rgb_images(frames: &[RgbaImage]) -> Vec<RgbImage> {
    frames
        .iter()
        .map(|f| {
            assert!(
                f.pixels().all(|p| p.0[3] == 255),
                "a square render is opaque"
            );
            RgbImage::from_raw(f.width(), f.height(), rgb_of(f)).expect("rgb")
        })
        .collect()
}

#[test]
fn fit_is_the_default_and_renders_a_wide_plate_at_its_size_between_the_bars() {
    let wide = write_clip("wide", (0..LEN).map(mesh_frame));
    let (fit, log) = render(wide.path(), &[]);
    assert!(
        log.contains("framing fit of the 96x54 Source"),
        "fit is the default"
    );
    assert!(
        log.contains("GetClipPreferences: Output premultiplication OfxImageOpaque"),
        "opaque alpha over the whole plate"
    );
    // The 96×96 plate padded with 21 black rows above and below (54 + 42 = 96).
    let padded = write_clip(
        "padded",
        (0..LEN).map(|n| on_square(&mesh_frame(n), 0, -21, W)),
    );
    let (square, _) = render(padded.path(), &[]);
    let (square_squash, _) = render(padded.path(), &["framing=squash"]);
    let square = rgb_images(&square);
    for n in 0..LEN {
        assert!(
            square[n] == rgb_images(&square_squash)[n],
            "frame {n}: fit of a square plate is squash, bit for bit"
        );
        assert_eq!(fit[n].dimensions(), (W, H), "frame {n}: the Source's size");
        let centre = image::imageops::crop_imm(&square[n], 0, 21, W, H).to_image();
        assert_placed(&fit[n], &centre, 0, 0, &format!("fit frame {n}"));
    }
}

#[test]
fn squash_and_region_place_the_square_where_they_took_it() {
    let wide = write_clip("wide", (0..LEN).map(mesh_frame));

    // Squash: the plate resized to 64² (LANCZOS) is the control; the result is resized back.
    let (squash, log) = render(wide.path(), &["framing=squash"]);
    assert!(log.contains("framing squash of the 96x54 Source"));
    let small = write_clip(
        "squashed",
        (0..LEN).map(|n| {
            let rgb = resize_rgb8(
                mesh_frame(n).as_raw(),
                W as usize,
                H as usize,
                RES as usize,
                RES as usize,
                Filter::Lanczos,
            );
            RgbImage::from_raw(RES, RES, rgb).expect("64²")
        }),
    );
    let (working, _) = render(small.path(), &[]);
    for (n, square) in rgb_images(&working).iter().enumerate() {
        let back = resize_rgb8(
            square.as_raw(),
            RES as usize,
            RES as usize,
            W as usize,
            H as usize,
            Filter::Lanczos,
        );
        let want = RgbImage::from_raw(W, H, back).expect("96x54");
        assert_placed(&squash[n], &want, 0, 0, &format!("squash frame {n}"));
    }

    // Region: the 40-pixel square centred at canonical (60, 30) (y up) is plate columns 40..80
    // and rows 54 − 30 − 20 = 4..44 (y down); outside it the Output is black and transparent.
    let (region, log) = render(
        wide.path(),
        &["framing=region", "regionCenter=60,30", "regionSize=40"],
    );
    assert!(log.contains("framing region:40,4,40 of the 96x54 Source"));
    assert!(log.contains("GetClipPreferences: Output premultiplication OfxImageAlphaPremultiplied"));
    // Untouched, the region is the plate's shorter side around its centre: columns 21..75.
    let (_, log) = render(wide.path(), &["framing=region"]);
    assert!(log.contains("framing region:21,0,54 of the 96x54 Source"));
    let crops = write_clip(
        "crops",
        (0..LEN).map(|n| on_square(&mesh_frame(n), 40, 4, 40)),
    );
    let (crop_render, _) = render(crops.path(), &[]);
    for (n, square) in rgb_images(&crop_render).iter().enumerate() {
        assert_eq!(
            region[n].dimensions(),
            (W, H),
            "frame {n}: the Source's size"
        );
        assert_placed(&region[n], square, 40, 4, &format!("region frame {n}"));
    }
}

#[test]
fn silhouette_alpha_is_the_mesh_matte_and_the_colour_is_premultiplied() {
    let wide = write_clip("wide", (0..LEN).map(mesh_frame));
    let (opaque, _) = render(wide.path(), &[]);
    let (matte, log) = render(wide.path(), &["outputAlpha=silhouette", "matteFeather=3"]);
    assert!(log.contains("GetClipPreferences: Output premultiplication OfxImageAlphaPremultiplied"));
    for n in 0..LEN {
        let mesh = mesh_frame(n);
        let want = silhouette_matte(
            mesh.as_raw(),
            W as usize,
            H as usize,
            SILHOUETTE_THRESHOLD,
            3,
        );
        assert_eq!(matte[n].dimensions(), (W, H));
        let alpha: Vec<u8> = matte[n].pixels().map(|p| p.0[3]).collect();
        assert!(alpha == want, "frame {n}: alpha is the engine's silhouette");
        // The person is opaque, the background transparent, the edge in between.
        let head = mesh.get_pixel(40 + 6 * n as u32, 14);
        assert!(
            head.0[0] > 200,
            "frame {n}: the head is where the test put it"
        );
        assert_eq!(matte[n].get_pixel(40 + 6 * n as u32, 14).0[3], 255);
        assert_eq!(
            matte[n].get_pixel(2, 2).0,
            [0, 0, 0, 0],
            "frame {n}: corner"
        );
        assert!(
            alpha.iter().any(|&a| a > 0 && a < 255),
            "frame {n}: feather"
        );
        // Colour = the opaque render's colour × alpha, quantised as a host quantises floats.
        for (x, y, p) in matte[n].enumerate_pixels() {
            let a = f32::from(p.0[3]) / 255.0;
            let o = opaque[n].get_pixel(x, y).0;
            for (c, (&got, &colour)) in p.0.iter().zip(&o[..3]).enumerate() {
                let want = ((f32::from(colour) / 255.0 * a).clamp(0.0, 1.0) * 255.0).round() as u8;
                assert_eq!(got, want, "frame {n}: ({x}, {y}) channel {c}");
            }
        }
    }
}
