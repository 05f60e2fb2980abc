//! MLT (melt 7.40's openfx module: Kdenlive, Shotcut) renders with Make Your Anchor (issue 13):
//! under `ofx-render --host mlt` (Filter context, no temporal access, bottom-up byte images, no
//! clip or effect frame range, an instance and Begin/EndSequenceRender per frame) the effect
//! writes exactly the frames of `anchor render --window 1 --overlap 0` and posts one warning
//! about temporal access; and with any property it can do without withheld (`--withhold`, the
//! host answers kOfxStatErrUnknown) a render still succeeds, while a withheld property OFX
//! requires fails the render with a message naming that property and the action.
//!
//! Settings are kept small for CI: the tiny model at 64×64, 2 DDIM steps for the MLT pass
//! (3 frames), 1 step for the sweep (1 frame of 2).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{anchor_exe, TempDir};
use image::{Rgb, RgbImage};

/// Working resolution and pose size (no resize on either side).
const RES: u32 = 64;
const SEED: u64 = 42;
/// The one-time warning of a host without temporal clip access (plugin/effect/src/body.rs).
const NO_TEMPORAL_WARNING: &str = "The host gives Make Your Anchor no temporal clip access, so it cannot read the neighbouring frames a window needs: every frame is denoised on its own (window 1), which flickers more. Use a host with temporal clip access (Natron, Resolve) for the temporally consistent result";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn photo() -> PathBuf {
    fixtures().join("photo.png")
}

/// The tiny model with the photo as its default appearance (`appearance.png`): MLT offers only
/// the Filter context, which has no Appearance clip.
fn model() -> &'static Path {
    static M: OnceLock<TempDir> = OnceLock::new();
    M.get_or_init(|| {
        let dir = TempDir::new("mlt-model");
        for entry in std::fs::read_dir(fixtures().join("tiny")).expect("list tiny") {
            let entry = entry.expect("entry");
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))
                .expect("symlink");
        }
        std::fs::copy(photo(), dir.join("appearance.png")).expect("copy photo");
        dir
    })
    .path()
}

/// A mesh-render-like pose: a moving blob and a limb on a textured dark background.
fn pose_frame(n: usize) -> RgbImage {
    let n = n as f32;
    RgbImage::from_fn(RES, RES, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let (cx, cy) = (26.0 + 9.0 * (n * 0.4).sin(), 30.0 + 3.0 * n);
        let d = ((xf - cx).powi(2) + ((yf - cy) * 0.7).powi(2)).sqrt();
        if d < 13.0 {
            let shade = (210.0 - d * 7.0) as u8;
            Rgb([shade, (shade as f32 * 0.7) as u8, (110.0 + n * 20.0) as u8])
        } else if (yf - cy + 0.4 * (xf - cx)).abs() < 2.5 && xf > cx {
            Rgb([80, 170, (50.0 + n * 30.0) as u8])
        } else {
            Rgb([(x * 3 % 40) as u8, (y % 20) as u8, 24])
        }
    })
}

/// `frames` poses as `pose_0000.png` … in a new directory.
fn poses(frames: usize) -> TempDir {
    let dir = TempDir::new("mlt-poses");
    for n in 0..frames {
        pose_frame(n)
            .save(dir.join(&format!("pose_{n:04}.png")))
            .expect("write pose");
    }
    dir
}

/// `anchor render --window 1 --overlap 0` of every pose in `dir`: the frames, 8-bit RGB.
fn cli_render(dir: &Path, frames: usize, steps: usize) -> Vec<Vec<u8>> {
    let out = TempDir::new("mlt-cli-out");
    let run = Command::new(anchor_exe())
        .arg("render")
        .arg("--model")
        .arg(fixtures().join("tiny"))
        .arg("--poses")
        .arg(dir)
        .arg("--appearance")
        .arg(photo())
        .arg("--out")
        .arg(out.path())
        .args(["--resolution", &RES.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--window", "1", "--overlap", "0"])
        .args(["--seed", &SEED.to_string()])
        .args(["--cfg", "7.5", "--control-scale", "2.0"])
        .args(["--device", "cpu", "--precision", "f32", "--threads", "1"])
        .output()
        .expect("spawn anchor render");
    assert!(
        run.status.success(),
        "anchor render failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        String::from_utf8_lossy(&run.stdout)
    );
    (0..frames)
        .map(|n| {
            let path = out.join(&format!("pose_{n:04}.png"));
            let img = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8();
            assert_eq!(img.dimensions(), (RES, RES), "CLI frame {n}");
            img.into_raw()
        })
        .collect()
}

/// `ofx-render` arguments: the poses in, `out` out, the anchor parameters. `window=4` is the
/// user's setting; without temporal access the effect must fall back to windows of one frame.
fn args(input: &Path, out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
    ];
    for p in [
        format!("modelFolder={}", model().display()),
        format!("resolution={RES}"),
        format!("steps={steps}"),
        "window=4".into(),
        "overlap=1".into(),
        format!("seed={SEED}"),
        "guidance=7.5".into(),
        "controlScale=2.0".into(),
        "device=CPU".into(),
    ] {
        a.push("--param".into());
        a.push(p);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn explain(r: &common::LoggedRun) -> String {
    let tail: Vec<&str> = r.log.lines().rev().take(12).collect();
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}\nplugin log (tail):\n{}",
        r.code,
        r.stdout,
        r.stderr,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// The written frame `n` as 8-bit RGB, checking alpha is 255.
fn written(out: &Path, n: usize) -> Vec<u8> {
    let path = out.join(format!("pose_{n:04}.png"));
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgba8();
    assert_eq!(img.dimensions(), (RES, RES), "frame {n}");
    assert!(img.pixels().all(|p| p.0[3] == 255), "frame {n}: alpha 1");
    img.pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect()
}

/// The plugin's posted messages of kind `kind` (as `ofx-render` echoes them on stderr).
fn posted<'a>(stderr: &'a str, kind: &str) -> Vec<&'a str> {
    let prefix = format!("ofx-render: plugin {kind}: ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn mlt_renders_the_frames_of_the_cli_with_window_1_and_warns_once() {
    const FRAMES: usize = 3;
    const STEPS: usize = 2;
    let input = poses(FRAMES);
    let reference = cli_render(input.path(), FRAMES, STEPS);
    let out = TempDir::new("mlt-out");
    let run = common::ofx_render_logged(
        &args(input.path(), out.path(), STEPS, &["--host", "mlt"]),
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    // One instance per frame, Filter context, byte images.
    assert!(
        run.stdout.contains(&format!(
            "rendered {FRAMES} frame(s) (0-{}) with org.makeyouranchor.Anchor 1.0 [filter, byte, 1 thread(s), {FRAMES} instance(s)",
            FRAMES - 1
        )),
        "{}",
        run.stdout
    );
    for (n, want) in reference.iter().enumerate() {
        let got = written(out.path(), n);
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "frame {n}: byte {i} (pixel ({}, {})) is {}, the CLI wrote {}\n{}",
                (i / 3) % RES as usize,
                (i / 3) / RES as usize,
                got[i],
                want[i],
                explain(&run)
            );
        }
    }
    assert_eq!(
        posted(&run.stderr, "warning"),
        [NO_TEMPORAL_WARNING],
        "exactly one warning, about temporal access: {}",
        run.stderr
    );
    assert!(
        posted(&run.stderr, "error").is_empty(),
        "no error posted: {}",
        run.stderr
    );
    // The emulation withholds the frame range (MLT 7.40): the effect says how it coped.
    assert!(
        run.log.contains("neither the Source clip's frame range (propGetDouble(OfxImageEffectPropFrameRange) returned kOfxStatErrUnknown) nor the effect's (propGetDouble(OfxImageEffectPropFrameRange) returned kOfxStatErrUnknown) is usable"),
        "{}",
        explain(&run)
    );
    eprintln!(
        "MLT: {FRAMES} frames bit-identical with the CLI in {:.1} s",
        run.seconds
    );
}

#[test]
fn mlt_offers_the_filter_context_only() {
    let input = poses(1);
    let out = TempDir::new("mlt-general");
    let run = common::ofx_render(&[
        "--bundle",
        common::bundle().to_str().expect("utf-8 path"),
        "--input",
        input.path().to_str().expect("utf-8 path"),
        "--output",
        out.path().to_str().expect("utf-8 path"),
        "--host",
        "mlt",
        "--context",
        "general",
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--host mlt offers the Filter context only"),
        "{}",
        run.stderr
    );
}

/// What withholding a property must do to a render.
enum Expect {
    /// The render succeeds with exactly the frame of a run that withholds nothing: the effect
    /// falls back to what the host would have said.
    Same,
    /// The render succeeds; the fallback changes the picture (e.g. windows of one frame).
    Differs,
    /// The render fails with a message holding this text (the property is one that OFX
    /// requires of every host), naming the property and the action or frame.
    Fails(&'static str),
}

/// Every property the effect reads that the OFX spec does not require of a host (or that a
/// real host is known to lack), and the properties OFX requires, with what withholding each
/// must do. `SCOPE:NAME` withholds NAME only on the property sets described by SCOPE.
const SWEEP: &[(&str, Expect)] = &[
    // Clip, effect and Begin/EndSequenceRender frame range (MLT sets none on clips or on the
    // effect): the frame being rendered is a clip of its own, so its window holds one frame.
    ("OfxImageEffectPropFrameRange", Expect::Differs),
    // The Source clip's range alone: the effect's range (the same here) stands in for it.
    ("clip Source:OfxImageEffectPropFrameRange", Expect::Same),
    // The host's temporal clip access: none, so windows of one frame (and the warning).
    ("OfxImageEffectPropTemporalClipAccess", Expect::Differs),
    // The host's name (and InstanceChanged's parameter name): empty; this host has no
    // convention of its own.
    ("OfxPropName", Expect::Same),
    // OFX 1.5 colour management (this host sets it only with --linear): the host's convention.
    ("OfxImageClipPropColourspace", Expect::Same),
    // Pixel aspect ratio of clips and images (read by the face pass): square pixels.
    ("OfxImagePropPixelAspectRatio", Expect::Same),
    // Begin/EndSequenceRender's interactive flag: only logged.
    ("OfxPropIsInteractive", Expect::Same),
    // The Source clip's depth only picks the default transfer; the images carry their own.
    ("clip Source:OfxImageEffectPropPixelDepth", Expect::Same),
    // Required by OFX: action arguments, clip and instance properties, image layout.
    (
        "OfxPropTime",
        Expect::Fails("An OpenFX host call failed in GetRegionOfDefinition: propGetDouble(OfxPropTime) returned kOfxStatErrUnknown"),
    ),
    (
        "OfxImageEffectPropRenderWindow",
        Expect::Fails("An OpenFX host call failed in Render: propGetIntN(OfxImageEffectPropRenderWindow) returned kOfxStatErrUnknown"),
    ),
    (
        "describe in context:OfxImageEffectPropContext",
        Expect::Fails("An OpenFX host call failed in DescribeInContext: propGetString(OfxImageEffectPropContext) returned kOfxStatErrUnknown"),
    ),
    (
        "effect instance:OfxImageEffectPropContext",
        Expect::Fails("An OpenFX host call failed in CreateInstance: propGetString(OfxImageEffectPropContext) returned kOfxStatErrUnknown"),
    ),
    (
        "OfxPropInstanceData",
        Expect::Fails("An OpenFX host call failed in DestroyInstance: propGetPointer(OfxPropInstanceData) returned kOfxStatErrUnknown"),
    ),
    (
        "OfxImageClipPropConnected",
        Expect::Fails("An OpenFX host call failed in GetRegionOfDefinition: propGetInt(OfxImageClipPropConnected) returned kOfxStatErrUnknown"),
    ),
    (
        "image:OfxImagePropRowBytes",
        Expect::Fails("Make Your Anchor could not render frame 1: invalid input: Source at frame 0: propGetInt(OfxImagePropRowBytes) returned kOfxStatErrUnknown"),
    ),
    (
        "image:OfxImagePropBounds",
        Expect::Fails("propGetIntN(OfxImagePropBounds) returned kOfxStatErrUnknown"),
    ),
    (
        "image:OfxImagePropData",
        Expect::Fails("propGetPointer(OfxImagePropData) returned kOfxStatErrUnknown"),
    ),
    (
        "image:OfxImageEffectPropComponents",
        Expect::Fails("propGetString(OfxImageEffectPropComponents) returned kOfxStatErrUnknown"),
    ),
    (
        "image:OfxImageEffectPropPixelDepth",
        Expect::Fails("propGetString(OfxImageEffectPropPixelDepth) returned kOfxStatErrUnknown"),
    ),
];

/// Properties of `SWEEP` that a plain body render does not read (the face pass does).
const NOT_READ_BY_THE_BODY: &[&str] = &["OfxImagePropPixelAspectRatio"];

#[test]
fn every_optional_property_can_be_withheld_and_required_ones_are_named() {
    const STEPS: usize = 1;
    let input = poses(2);
    // Frame 1 of the 2-frame clip (window 4 covers both), withholding `extra`.
    let render = |out: &Path, extra: &[&str]| {
        let mut a = vec!["--frames", "1"];
        a.extend(extra);
        common::ofx_render_logged(&args(input.path(), out, STEPS, &a), &[])
    };
    let plain_out = TempDir::new("withhold-none");
    let plain = render(plain_out.path(), &[]);
    assert_eq!(plain.code, Some(0), "{}", explain(&plain));
    let plain_frame = written(plain_out.path(), 1);
    let mut failures = Vec::new();
    for (prop, expect) in SWEEP {
        let out = TempDir::new("withhold");
        let run = render(out.path(), &["--withhold", prop]);
        let outcome = match expect {
            Expect::Same | Expect::Differs if run.code != Some(0) => {
                Err("the render failed".to_string())
            }
            Expect::Same if written(out.path(), 1) != plain_frame => {
                Err("the frame differs from the run that withholds nothing".to_string())
            }
            Expect::Same | Expect::Differs => {
                // ofx-render reports the reads it refused: the effect does ask for it.
                let refused = format!("ofx-render: withheld {prop}: ");
                let reads = run
                    .stderr
                    .lines()
                    .find_map(|l| l.strip_prefix(refused.as_str()))
                    .and_then(|rest| rest.split_once(' '))
                    .and_then(|(n, _)| n.parse::<usize>().ok());
                match reads {
                    Some(0) if !NOT_READ_BY_THE_BODY.contains(prop) => {
                        Err("the effect never read it".to_string())
                    }
                    Some(n) => Ok(format!("rendered, {n} read(s) refused")),
                    None => Err("no count of refused reads".to_string()),
                }
            }
            Expect::Fails(text) => {
                let posted_it = posted(&run.stderr, "error")
                    .iter()
                    .any(|e| e.contains(text));
                if run.code == Some(1) && posted_it {
                    Ok("failed, naming it".to_string())
                } else {
                    Err(format!("expected a failure posting {text:?}"))
                }
            }
        };
        match outcome {
            Ok(what) => eprintln!("withheld {prop}: {what}, {:.1} s", run.seconds),
            Err(why) => failures.push(format!("{prop}: {why}\n{}", explain(&run))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
