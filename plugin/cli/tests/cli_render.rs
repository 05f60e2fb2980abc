//! The `anchor` CLI on the tiny fixture model: exact order/thread/farm-split independence,
//! exact network-call counts, and named errors for bad inputs (issue 4).
mod common;
use common::frames;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Writes `n` procedurally drawn 64×64 pose frames (and returns the folder).
fn poses(dir: &Path, n: usize, size: u32) -> PathBuf {
    let p = dir.join("poses");
    std::fs::create_dir_all(&p).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let cx = 20 + (i as u32 * 3) % 24;
            let body = x.abs_diff(cx) < 8 && y > 16 || x.abs_diff(cx) < 5 && y.abs_diff(10) < 5;
            if body {
                image::Rgb([118, 132, 168])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(p.join(format!("f{i:03}.png"))).unwrap();
    }
    p
}

struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
}

fn anchor(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(args)
        .output()
        .unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        ok: out.status.success(),
    }
}

fn render(poses: &Path, out: &Path, extra: &[&str]) -> Run {
    render_model(&fixtures().join("tiny"), poses, out, extra)
}

/// [`render`] with another model folder.
fn render_model(model: &Path, poses: &Path, out: &Path, extra: &[&str]) -> Run {
    let r = try_render_model(model, poses, out, extra);
    assert!(r.ok, "anchor failed: {}", r.stderr);
    r
}

/// `anchor render` of the tiny test settings, which may fail.
fn try_render_model(model: &Path, poses: &Path, out: &Path, extra: &[&str]) -> Run {
    let photo = fixtures().join("photo.png");
    let mut with_photo = vec!["--appearance", photo.to_str().unwrap()];
    with_photo.extend_from_slice(extra);
    try_render_photoless(model, poses, out, &with_photo)
}

/// `anchor render` of the tiny test settings without `--appearance` (unless `extra` gives one).
fn try_render_photoless(model: &Path, poses: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "render",
        "--model",
        model.to_str().unwrap(),
        "--poses",
        poses.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resolution",
        "64",
        "--steps",
        "3",
        "--window",
        "4",
        "--overlap",
        "1",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    anchor(&args)
}

fn calls(r: &Run) -> u64 {
    let s = r.stdout.split(" network calls").next().unwrap();
    s.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn order_threads_and_farm_split_give_identical_pixels() {
    let tmp = tempdir("order");
    let poses = poses(&tmp, 12, 64);
    let base = tmp.join("seq");
    let r = render(&poses, &base, &[]);
    // 12 frames, window 4, overlap 1 → windows [0,4) [3,7) [6,10) [9,12): 4 × 3 steps.
    assert_eq!(calls(&r), 12, "{}", r.stdout);
    let want = frames(&base);
    assert_eq!(want.len(), 12);
    for (name, extra) in [
        ("rev", vec!["--order", "reverse"]),
        ("rnd", vec!["--order", "random"]),
        ("thr", vec!["--order", "random", "--threads", "4"]),
    ] {
        let out = tmp.join(name);
        let r = render(&poses, &out, &extra);
        assert_eq!(calls(&r), 12, "{name}: no window batch computed twice");
        assert_eq!(frames(&out), want, "{name}");
    }
    // A farm split: two processes on two ranges of the same clip.
    let farm = tmp.join("farm");
    render(&poses, &farm, &["--frames", "0-5"]);
    render(&poses, &farm, &["--frames", "6-11", "--order", "reverse"]);
    assert_eq!(frames(&farm), want, "farm split");
    // Another seed changes the frames.
    let other = tmp.join("seed");
    render(&poses, &other, &["--seed", "7"]);
    assert_ne!(frames(&other), want);
}

#[test]
fn dumped_latents_have_the_documented_layout() {
    let tmp = tempdir("dump");
    let poses = poses(&tmp, 5, 64);
    let dump = tmp.join("lat.safetensors");
    render(
        &poses,
        &tmp.join("out"),
        &["--dump-latents", dump.to_str().unwrap()],
    );
    let t = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    for s in 0..3 {
        assert_eq!(t[&format!("latents_step{s}")].dims(), &[5, 4, 8, 8]);
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let tmp = tempdir("bad");
    let good = poses(&tmp, 4, 64);
    let fail = |poses: &Path, extra: &[&str], expect: &str| {
        let model = fixtures().join("tiny");
        let photo = fixtures().join("photo.png");
        let out = tmp.join("out-bad");
        let mut args = vec![
            "render",
            "--model",
            model.to_str().unwrap(),
            "--poses",
            poses.to_str().unwrap(),
            "--appearance",
            photo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--resolution",
            "64",
            "--steps",
            "2",
            "--window",
            "4",
            "--overlap",
            "1",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let r = anchor(&args);
        assert!(!r.ok, "expected failure for {expect}");
        assert!(
            r.stderr.contains(expect),
            "stderr {:?} lacks {expect:?}",
            r.stderr
        );
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
            "partial output"
        );
    };
    // Mixed sizes.
    let mixed = tmp.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(good.join("f000.png"), mixed.join("a.png")).unwrap();
    image::RgbImage::new(32, 64)
        .save(mixed.join("b.png"))
        .unwrap();
    fail(&mixed, &[], "pose frames have mixed sizes");
    // Empty folder.
    let empty = tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fail(&empty, &[], "holds no PNG or JPEG frames");
    // Unreadable image.
    let broken = tmp.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("x.png"), b"not a png").unwrap();
    fail(&broken, &[], "cannot read image");
    // Window settings.
    fail(
        &good,
        &["--overlap", "4"],
        "overlap (4) must be smaller than window (4)",
    );
    fail(
        &good,
        &["--window", "0", "--overlap", "0"],
        "window must be at least 1",
    );
    // Noise of the wrong shape.
    let noise = tmp.join("noise.safetensors");
    let t = candle_core::Tensor::zeros(
        (4, 4, 4),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise".to_string(), t)]),
        &noise,
    )
    .unwrap();
    fail(
        &good,
        &["--noise", noise.to_str().unwrap()],
        "expected [4, 8, 8]",
    );
    // A resolution that is not a multiple of 32 is rounded down, and said so.
    let r = render(&good, &tmp.join("res"), &["--resolution", "70"]);
    assert!(
        r.stderr
            .contains("resolution 70 is not a multiple of 32; using 64"),
        "{}",
        r.stderr
    );
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anchor-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `--control-residuals`: the default is the original in-place addition; `standard` changes the
/// pixels; a model folder's `anchor.json` can choose standard; a wrong value is named.
#[test]
fn control_residuals_switch_and_model_default() {
    let tmp = tempdir("residuals");
    let poses = poses(&tmp, 4, 64);
    let default = tmp.join("default");
    let original = tmp.join("original");
    let standard = tmp.join("standard");
    render(&poses, &default, &[]);
    render(&poses, &original, &["--control-residuals", "original"]);
    render(&poses, &standard, &["--control-residuals", "standard"]);
    assert_eq!(
        frames(&default),
        frames(&original),
        "the default is original"
    );
    assert_ne!(
        frames(&default),
        frames(&standard),
        "standard residuals give the same pixels"
    );

    // The same tiny model with `"control_residuals": "standard"` in its anchor.json.
    let model = tmp.join("model-standard");
    std::fs::create_dir_all(&model).unwrap();
    let tiny = fixtures().join("tiny");
    let components = [
        "unet",
        "controlnet",
        "vae",
        "scheduler",
        "text_encoder",
        "image_encoder",
    ]
    .map(|c| format!("{c:?}: {:?}", tiny.join(c).to_str().unwrap()))
    .join(", ");
    std::fs::write(
        model.join("anchor.json"),
        format!(
            "{{\"components\": {{{components}}}, \"defaults\": {{\"control_residuals\": \"standard\"}}}}"
        ),
    )
    .unwrap();
    let from_json = tmp.join("from-json");
    render_model(&model, &poses, &from_json, &[]);
    assert_eq!(
        frames(&from_json),
        frames(&standard),
        "anchor.json chose standard"
    );

    let r = anchor(&["render", "--control-residuals", "inplace"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("expected original") && r.stderr.contains("standard"),
        "{}",
        r.stderr
    );
}

/// Frames are the numbers in the file names, in natural order (`mesh.9` before `mesh.10`), chosen
/// with farm-style ranges; a gap is named; `--skip-existing` resumes; other settings into the
/// same folder are refused without `--overwrite`; the header says what runs where.
#[test]
fn farm_style_frames_skip_existing_and_settings_stamp() {
    let tmp = tempdir("numbered");
    let plain = poses(&tmp, 12, 64);
    // The same clip named mesh.1001.png … mesh.1012.png (no zero padding: raw sorting would put
    // mesh.1010 before mesh.1002 only with padding differences, so use a run crossing 9 → 10).
    let numbered = tmp.join("numbered");
    std::fs::create_dir_all(&numbered).unwrap();
    for i in 0..12 {
        std::fs::copy(
            plain.join(format!("f{i:03}.png")),
            numbered.join(format!("mesh.{}.png", i + 1)),
        )
        .unwrap();
    }
    let base = tmp.join("base");
    let r = render(&plain, &base, &[]);
    assert!(
        r.stderr.contains("anchor: rendering frames 0-11 of clip 0-11 (12 frames) on cpu, f32, 64x64, 3 steps, windows 4/1"),
        "{}",
        r.stderr
    );
    let want = frames(&base);
    let out = tmp.join("out");
    render(&numbered, &out, &["--frames", "2-12x2"]);
    let got = frames(&out);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "mesh.10.png",
            "mesh.12.png",
            "mesh.2.png",
            "mesh.4.png",
            "mesh.6.png",
            "mesh.8.png"
        ]
    );
    // mesh.N is clip position N-1, in natural order: the same pixels as f{N-1}.
    for (name, px) in &got {
        let n: usize = name[5..name.len() - 4].parse().unwrap();
        assert_eq!(px, &want[n - 1].1, "{name}");
    }
    // Resume: the remaining frames only; nothing already written is recomputed or rewritten.
    let r = render(&numbered, &out, &["--skip-existing", "-q"]);
    assert!(r.stderr.is_empty(), "-q keeps stderr quiet: {}", r.stderr);
    assert_eq!(frames(&out).len(), 12);
    let r = render(&numbered, &out, &["--skip-existing"]);
    assert_eq!(calls(&r), 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("12 of 12 frames already in"),
        "{}",
        r.stderr
    );
    // Other settings into the same folder: refused, then replaced with --overwrite.
    let r = anchor_raw(&numbered, &out, &["--seed", "9"]);
    assert!(
        !r.ok && r.stderr.contains("pass --overwrite"),
        "{}",
        r.stderr
    );
    render(
        &numbered,
        &out,
        &["--seed", "9", "--overwrite", "--frames", "1"],
    );
    // A gap names the missing frames; a range outside the clip names it.
    std::fs::remove_file(numbered.join("mesh.5.png")).unwrap();
    std::fs::remove_file(numbered.join("mesh.6.png")).unwrap();
    let r = anchor_raw(&numbered, &tmp.join("gap"), &[]);
    assert!(
        r.stderr.contains("frames 5-6 are missing between 1 and 12"),
        "{}",
        r.stderr
    );
    let r = anchor_raw(&plain, &tmp.join("range"), &["--frames", "10-20"]);
    assert!(
        r.stderr.contains("frames 12-20 are outside the clip 0-11"),
        "{}",
        r.stderr
    );
    // --version names the revision and whether CUDA is compiled in.
    let v = anchor(&["--version"]);
    assert!(
        v.stdout.contains("revision") && v.stdout.contains("CUDA"),
        "{}",
        v.stdout
    );
}

/// `anchor render` with the tiny model that may fail.
fn anchor_raw(poses: &Path, out: &Path, extra: &[&str]) -> Run {
    try_render_model(&fixtures().join("tiny"), poses, out, extra)
}

/// A 96×64 plate: `fit` (the default) renders the plate padded to a square around its centre and
/// writes the plate's size, exactly the centre of a squash render of the padded square;
/// `--alpha silhouette` writes premultiplied RGBA whose alpha is the mesh's silhouette.
#[test]
fn wide_plates_are_fitted_and_the_silhouette_is_the_alpha() {
    let tmp = tempdir("wide");
    let square = poses(&tmp, 6, 64);
    let (wide, padded) = (tmp.join("wide"), tmp.join("padded"));
    std::fs::create_dir_all(&wide).unwrap();
    std::fs::create_dir_all(&padded).unwrap();
    for i in 0..6 {
        let src = image::open(square.join(format!("f{i:03}.png")))
            .unwrap()
            .to_rgb8();
        // The wide plate: the figure with 16 black columns each side; the padded square adds
        // 16 black rows above and below that.
        let w = image::RgbImage::from_fn(96, 64, |x, y| {
            if (16..80).contains(&x) {
                *src.get_pixel(x - 16, y)
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let p = image::RgbImage::from_fn(96, 96, |x, y| {
            if (16..80).contains(&y) {
                *w.get_pixel(x, y - 16)
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        w.save(wide.join(format!("f{i:03}.png"))).unwrap();
        p.save(padded.join(format!("f{i:03}.png"))).unwrap();
    }
    let (fit, sq) = (tmp.join("fit"), tmp.join("sq"));
    render(&wide, &fit, &[]);
    render(&padded, &sq, &["--framing", "squash"]);
    for i in 0..6 {
        let name = format!("f{i:03}.png");
        let f = image::open(fit.join(&name)).unwrap().to_rgb8();
        assert_eq!(f.dimensions(), (96, 64), "the plate's size");
        let s = image::open(sq.join(&name)).unwrap().to_rgb8();
        let centre = image::imageops::crop_imm(&s, 0, 16, 96, 64).to_image();
        assert_eq!(f.into_raw(), centre.into_raw(), "{name}");
    }
    let matte = tmp.join("matte");
    render(
        &wide,
        &matte,
        &["--alpha", "silhouette", "--matte-feather", "1"],
    );
    let mesh = image::open(wide.join("f002.png")).unwrap().to_rgb8();
    let want_alpha = anchor_engine::framing::silhouette_matte(
        mesh.as_raw(),
        96,
        64,
        anchor_engine::framing::SILHOUETTE_THRESHOLD,
        1,
    );
    let rgba = image::open(matte.join("f002.png")).unwrap();
    assert_eq!(rgba.color(), image::ColorType::Rgba8);
    let rgba = rgba.to_rgba8();
    let opaque = image::open(fit.join("f002.png")).unwrap().to_rgb8();
    let alpha: Vec<u8> = rgba.pixels().map(|p| p.0[3]).collect();
    assert_eq!(alpha, want_alpha);
    assert!(alpha.contains(&0) && alpha.contains(&255));
    let want_rgb = anchor_engine::framing::premultiply_rgba8(opaque.as_raw(), &want_alpha);
    assert_eq!(rgba.into_raw(), want_rgb, "premultiplied");
}

/// `--preview`: a middle frame from its own window alone costs one batch per step; the final
/// frame reads its whole cone.
#[test]
fn a_preview_of_a_middle_frame_costs_one_window() {
    let tmp = tempdir("preview");
    let poses = poses(&tmp, 36, 64);
    // Window 4 / overlap 1 over 36 frames: 12 windows; frame 16 lies in [15,19) only.
    let r = render(&poses, &tmp.join("final"), &["--frames", "16"]);
    let final_calls = calls(&r);
    let r = render(
        &poses,
        &tmp.join("preview"),
        &["--frames", "16", "--preview"],
    );
    assert_eq!(calls(&r), 3, "3 steps of one window: {}", r.stdout);
    // Its cone: 1 window at the last step, 3 at the one before, 5 at the first.
    assert_eq!(final_calls, 9, "the final frame's cone");
    eprintln!("frame 16 of 36: final {final_calls} calls, preview 3");
}

/// Path mistakes name their option before the model loads; without `--appearance` the model
/// folder's `appearance.png` is the photo, as in the effect.
#[test]
fn path_mistakes_name_their_option_and_the_appearance_is_optional() {
    let tmp = tempdir("paths");
    let poses = poses(&tmp, 4, 64);
    let file = tmp.join("afile");
    std::fs::write(&file, b"x").unwrap();
    // The tiny model with a default photo: its components linked, the photo beside them.
    let tiny = tmp.join("model");
    std::fs::create_dir_all(&tiny).unwrap();
    for e in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), tiny.join(e.file_name())).unwrap();
    }
    let photo = fixtures().join("photo.png");
    std::fs::copy(&photo, tiny.join("appearance.png")).unwrap();
    let args = |out: &Path, extra: &[&str]| try_render_photoless(&tiny, &poses, out, extra);
    let r = args(&file, &[]);
    assert!(
        r.stderr.contains("--out") && r.stderr.contains("is a file"),
        "{}",
        r.stderr
    );
    let r = args(&tmp.join("o1"), &["--appearance", "/no/such/photo.png"]);
    assert!(
        r.stderr
            .contains("--appearance /no/such/photo.png: no such file"),
        "{}",
        r.stderr
    );
    // The default photo: the same frames as naming it.
    let (a, b) = (tmp.join("default"), tmp.join("named"));
    let r = args(&a, &[]);
    assert!(r.ok, "{}", r.stderr);
    let r = args(&b, &["--appearance", photo.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(frames(&a), frames(&b));
}

/// `anchor inspect` reports the body (and head) part and fails on a folder with problems.
#[test]
fn inspect_exits_non_zero_on_problems() {
    let tiny = fixtures().join("tiny");
    let r = anchor(&["inspect", "--model", tiny.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("model part:   body"), "{}", r.stdout);
    let tmp = tempdir("inspect");
    let r = anchor(&["inspect", "--model", tmp.to_str().unwrap()]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("has the problems listed above"),
        "{}",
        r.stderr
    );
}

/// `anchor assemble` on a released layout built from the tiny fixtures: body/ and head/ only,
/// with SD1.5 and CLIP folders elsewhere. Before, the folder does not render; after, it renders
/// exactly as the complete tiny model, and inspect passes. A wrong SD1.5 folder is named and
/// leaves no anchor.json.
#[test]
fn assemble_makes_a_released_layout_usable() {
    let tmp = tempdir("assemble");
    let fx = fixtures();
    let link = |from: PathBuf, to: PathBuf| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(from, to).unwrap();
    };
    let released = tmp.join("seth");
    link(fx.join("tiny/unet"), released.join("body/unet"));
    link(fx.join("tiny/controlnet"), released.join("body/controlnet"));
    link(fx.join("tiny_face/head/unet"), released.join("head/unet"));
    link(
        fx.join("tiny_face/head/controlnet"),
        released.join("head/controlnet"),
    );
    let sd15 = tmp.join("sd15");
    for c in ["vae", "text_encoder", "scheduler"] {
        link(fx.join("tiny").join(c), sd15.join(c));
    }
    let poses = poses(&tmp, 4, 64);
    let r = try_render_model(&released, &poses, &tmp.join("before"), &[]);
    assert!(!r.ok, "a released folder alone does not render");
    let clip = fx.join("tiny/image_encoder");
    let assemble = |sd15: &Path| {
        anchor(&[
            "assemble",
            "--released",
            released.to_str().unwrap(),
            "--sd15",
            sd15.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
        ])
    };
    let bad = assemble(&tmp);
    assert!(
        !bad.ok && bad.stderr.contains("no vae/ folder"),
        "{}",
        bad.stderr
    );
    assert!(!released.join("anchor.json").exists(), "nothing kept");
    let r = assemble(&sd15);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("model part:   head"), "{}", r.stdout);
    let again = assemble(&sd15);
    assert!(
        !again.ok && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    let inspect = anchor(&["inspect", "--model", released.to_str().unwrap()]);
    assert!(inspect.ok, "{}", inspect.stderr);
    let (a, b) = (tmp.join("assembled"), tmp.join("complete"));
    render_model(&released, &poses, &a, &[]);
    render(&poses, &b, &[]);
    assert_eq!(frames(&a), frames(&b));
}

/// `--overwrite` with `--skip-existing` re-renders frames of other settings instead of keeping
/// them; framing is part of the settings; RGBA output needs PNG poses; a preview cannot feed the
/// temporal face (its cone leaves the window).
#[test]
fn mixed_settings_are_never_kept_and_rgba_needs_png() {
    let tmp = tempdir("mixed");
    let poses = poses(&tmp, 6, 64);
    let out = tmp.join("out");
    render(&poses, &out, &["--preview"]);
    let r = anchor_raw(&poses, &out, &["--skip-existing"]);
    assert!(!r.ok && r.stderr.contains("--overwrite"), "{}", r.stderr);
    let r = render(&poses, &out, &["--overwrite", "--skip-existing"]);
    assert!(calls(&r) > 0, "every frame rendered again: {}", r.stdout);
    render(&poses, &tmp.join("final-ref"), &[]);
    assert_eq!(frames(&out), frames(&tmp.join("final-ref")));
    assert_eq!(frames(&out).len(), 6);
    // Framing is a setting: another framing into the same folder is refused.
    let r = anchor_raw(&poses, &out, &["--framing", "squash", "--skip-existing"]);
    assert!(!r.ok && r.stderr.contains("--overwrite"), "{}", r.stderr);
    // JPEG poses cannot carry a silhouette alpha.
    let jpeg = tmp.join("jpeg");
    std::fs::create_dir_all(&jpeg).unwrap();
    image::open(poses.join("f000.png"))
        .unwrap()
        .to_rgb8()
        .save(jpeg.join("f000.jpg"))
        .unwrap();
    let r = anchor_raw(&jpeg, &tmp.join("j"), &["--alpha", "silhouette"]);
    assert!(!r.ok && r.stderr.contains("is not a PNG"), "{}", r.stderr);
    let r = anchor_raw(&poses, &tmp.join("p"), &["--preview", "--face-temporal"]);
    assert!(
        !r.ok && r.stderr.contains("cannot be used with"),
        "{}",
        r.stderr
    );
}
