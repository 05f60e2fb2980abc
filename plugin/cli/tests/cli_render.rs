//! The `anchor` CLI on the tiny fixture model: exact order/thread/farm-split independence,
//! exact network-call counts, and named errors for bad inputs (issue 4).
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
    let photo = fixtures().join("photo.png");
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
        "3",
        "--window",
        "4",
        "--overlap",
        "1",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let r = anchor(&args);
    assert!(r.ok, "anchor failed: {}", r.stderr);
    r
}

fn frames(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                image::open(&p).unwrap().to_rgb8().into_raw(),
            )
        })
        .collect();
    v.sort();
    v
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
