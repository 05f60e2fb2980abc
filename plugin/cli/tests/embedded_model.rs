//! The embedded default model `resources/models/tiny-anchor` on the held-out example segment
//! (`examples/`, never seen in training; issues 6 and 7).
//!
//! Renders the held-out poses with `anchor render` (model defaults: 20 DDIM steps, CFG 3.5,
//! control scale 1.5, window 16, overlap 4), then runs the face pass on the first 60 body frames
//! (`--body`), scores them with `anchor eval` and checks:
//! - the body render beats the mean-training-frame baseline (`examples/mean_frame.png`) by at
//!   least [`MIN_GAIN_DB`] (issue 6: 3 dB) PSNR, and the person's silhouette matches the mesh
//!   silhouette (IoU ≥ 0.8);
//! - the face pass improves the face region's PSNR (the held-out face mattes) over the body-only
//!   frame by at least [`MIN_FACE_GAIN_DB`] (issue 7);
//! - every number equals the committed report in `examples/eval/` (PSNR within 0.05 dB, SSIM
//!   and IoU within 0.005, flicker within 0.02: the renders are deterministic, the tolerance
//!   covers floating-point differences between CPUs).
//!
//! `MAKE_YOUR_ANCHOR_BLESS=1 cargo test -p anchor-cli --test embedded_model` rewrites the
//! committed reports from a fresh render (after retraining the model).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The PSNR gain over the mean frame this test requires: issue 6's bar.
const MIN_GAIN_DB: f64 = 3.0;
/// The face-region PSNR gain of the face pass over the body-only frame this test requires
/// (issue 7 asks for an improvement; the shipped face model's, less a margin).
const MIN_FACE_GAIN_DB: f64 = 0.5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn anchor(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run anchor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "anchor {args:?} failed:\n{text}");
    text
}

/// Frames of the face-pass render: the first [`FACE_FRAMES`] of the segment, the face pass run
/// on the body render's frames (`--body`), exactly the frames of a full run.
const FACE_FRAMES: usize = 60;

/// The body-only and the face-pass renders of the held-out poses, made once per test binary:
/// `body` all frames, `body_head` and `face` the first [`FACE_FRAMES`] without and with the face
/// pass.
struct Renders {
    body: PathBuf,
    body_head: PathBuf,
    face: PathBuf,
}

fn renders() -> &'static Renders {
    static R: OnceLock<Renders> = OnceLock::new();
    R.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("anchor-embedded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (body, face) = (dir.join("body"), dir.join("face"));
        let model = "resources/models/tiny-anchor";
        let common = [
            "render",
            "--model",
            model,
            "--poses",
            "examples/poses",
            "--appearance",
            "examples/appearance.png",
        ];
        let t = std::time::Instant::now();
        let body_s = body.to_string_lossy().into_owned();
        anchor(&[&common[..], &["--out", &body_s]].concat());
        eprintln!("body render: {:.1} s", t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let face_s = face.to_string_lossy().into_owned();
        anchor(
            &[
                &common[..],
                &[
                    "--out",
                    &face_s,
                    "--face-model",
                    model,
                    "--face-landmarks",
                    "examples/landmarks.json",
                    "--frames",
                    &format!("0-{}", FACE_FRAMES - 1),
                    "--body",
                    &body_s,
                ],
            ]
            .concat(),
        );
        eprintln!(
            "face pass on {FACE_FRAMES} body frames: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let body_head = dir.join("body_head");
        std::fs::create_dir_all(&body_head).expect("mkdir");
        for i in 0..FACE_FRAMES {
            let name = format!("{i:06}.png");
            std::fs::copy(body.join(&name), body_head.join(&name)).expect("copy body frame");
        }
        Renders {
            body,
            body_head,
            face,
        }
    })
}

/// `anchor eval` of `pred` against the held-out truth, as JSON.
fn eval(pred: &Path, extra: &[&str]) -> Value {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = pred.with_extension(format!("eval{n}.json"));
    let pred_s = pred.to_string_lossy().into_owned();
    let json_s = json.to_string_lossy().into_owned();
    let text = anchor(
        &[
            &["eval", "--pred", &pred_s, "--truth", "examples/truth"][..],
            extra,
            &["--json", &json_s],
        ]
        .concat(),
    );
    eprint!("{text}");
    serde_json::from_slice(&std::fs::read(&json).expect("eval json")).expect("eval json parses")
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// Compares a fresh report with the committed `examples/eval/<name>.json` (or writes it when
/// blessing).
fn check_committed(name: &str, fresh: &Value, keys: &[(&[&str], f64)]) {
    let path = root().join("examples/eval").join(format!("{name}.json"));
    if std::env::var_os("MAKE_YOUR_ANCHOR_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut text = serde_json::to_string_pretty(fresh).expect("json");
        text.push('\n');
        std::fs::write(&path, text).expect("write committed report");
        eprintln!("blessed {}", path.display());
        return;
    }
    let committed: Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("committed report parses");
    for (key, tol) in keys {
        let (got, want) = (num(fresh, key), num(&committed, key));
        eprintln!("{name} {key:?}: fresh {got:.4}, committed {want:.4} (tolerance {tol})");
        assert!(
            (got - want).abs() <= *tol,
            "{name} {key:?}: fresh render gives {got}, examples/eval/{name}.json says {want}"
        );
    }
}

#[test]
fn embedded_model_beats_the_mean_frame_and_follows_the_mesh() {
    let r = renders();
    let report = eval(
        &r.body,
        &[
            "--mesh",
            "examples/poses",
            "--baseline",
            "examples/mean_frame.png",
        ],
    );
    let gain = num(&report, &["psnr_gain_db"]);
    let iou = num(&report, &["silhouette_iou"]);
    eprintln!(
        "held-out: PSNR {:.2} dB vs mean frame {:.2} dB (gain {gain:.2} dB), IoU {iou:.3}",
        num(&report, &["psnr_db"]),
        num(&report, &["baseline", "psnr_db"])
    );
    assert!(
        gain >= MIN_GAIN_DB,
        "PSNR gain over the mean frame {gain:.2} dB < {MIN_GAIN_DB} dB"
    );
    assert!(iou >= 0.8, "silhouette IoU {iou:.3} < 0.8");
    check_committed(
        "body",
        &report,
        &[
            (&["psnr_db"], 0.05),
            (&["ssim"], 0.005),
            (&["silhouette_iou"], 0.005),
            (&["baseline", "psnr_db"], 1e-6),
            (&["flicker", "ratio"], 0.02),
        ],
    );
}

#[test]
fn embedded_face_pass_improves_the_face_region() {
    let r = renders();
    let mask = ["--mask", "examples/face_matte"];
    let body = eval(&r.body_head, &mask);
    let face = eval(&r.face, &mask);
    let (pb, pf) = (num(&body, &["psnr_db"]), num(&face, &["psnr_db"]));
    eprintln!(
        "face region PSNR: body only {pb:.2} dB, with the face pass {pf:.2} dB ({:+.2} dB)",
        pf - pb
    );
    assert!(
        pf >= pb + MIN_FACE_GAIN_DB,
        "the face pass must improve the face region by {MIN_FACE_GAIN_DB} dB: \
         {pf:.2} dB vs {pb:.2} dB body only"
    );
    let keys: &[(&[&str], f64)] = &[(&["psnr_db"], 0.05), (&["ssim"], 0.005)];
    check_committed("face_region_body", &body, keys);
    check_committed("face_region_face", &face, keys);
    // The whole frame with the face pass: what the README's main command reports.
    let full = eval(&r.face, &["--mesh", "examples/poses"]);
    check_committed("face", &full, keys);
}
