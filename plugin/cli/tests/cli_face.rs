//! `anchor render … --face-model DIR --face-landmarks FILE --face-matte DIR` on the tiny body and
//! face fixture models (issue 7): the face square changes, every pixel outside the feathered square
//! is the body render's, frames without a face pass through with one warning per clip, and the
//! result does not depend on request order.
use std::path::{Path, PathBuf};
use std::process::Command;

use anchor_engine::face::align;
use anchor_engine::face::feather::{feather_mask, FeatherSettings};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SIZE: u32 = 64;
const CROP: usize = 64;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tempdir(tag: &str) -> std::io::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("anchor-face-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Head centre of frame `i` (a disc of radius 10 on a body column).
fn head(i: usize) -> (f64, f64) {
    (28.0 + 2.0 * i as f64, 22.0)
}

fn landmarks(i: usize) -> [[f64; 2]; 5] {
    let (cx, cy) = head(i);
    [
        [-4.0, -2.0],
        [4.0, -2.0],
        [0.0, 2.0],
        [-3.0, 6.0],
        [3.0, 6.0],
    ]
    .map(|[x, y]| [cx + x, cy + y])
}

fn poses(dir: &Path, n: usize) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let p = dir.join("poses");
    std::fs::create_dir_all(&p)?;
    for i in 0..n {
        let (cx, cy) = head(i);
        let img = image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            if dx * dx + dy * dy < 100.0 {
                let s = (160.0 - 3.0 * dx) as u8;
                image::Rgb([s, s, s.saturating_add(30)])
            } else if (x as f64 - cx).abs() < 9.0 && y as f64 > cy + 10.0 {
                image::Rgb([118, 132, 168])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(p.join(format!("{i:06}.png")))?;
    }
    Ok(p)
}

struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
}

fn anchor(args: &[String]) -> Result<Run, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(args)
        .output()?;
    Ok(Run {
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        ok: out.status.success(),
    })
}

fn render(poses: &Path, out: &Path, extra: &[String]) -> Result<Run, Box<dyn std::error::Error>> {
    let s = |v: &str| v.to_string();
    let p = |v: &Path| v.to_string_lossy().into_owned();
    let mut args = vec![
        s("render"),
        s("--model"),
        p(&fixtures().join("tiny")),
        s("--poses"),
        p(poses),
        s("--appearance"),
        p(&fixtures().join("photo.png")),
        s("--out"),
        p(out),
        s("--resolution"),
        s("64"),
        s("--steps"),
        s("3"),
        s("--window"),
        s("4"),
        s("--overlap"),
        s("1"),
        s("--device"),
        s("cpu"),
    ];
    args.extend_from_slice(extra);
    let r = anchor(&args)?;
    if !r.ok {
        return Err(format!("anchor failed: {}", r.stderr).into());
    }
    Ok(r)
}

fn face_args(landmarks: Option<&Path>, matte: Option<&Path>) -> Vec<String> {
    let mut v: Vec<String> = [
        "--face-model",
        &fixtures().join("tiny_face").to_string_lossy(),
        "--face-crop",
        "64",
        "--face-size",
        "64",
        "--face-steps",
        "3",
        "--face-erode",
        "4",
        "--face-blur",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(l) = landmarks {
        v.push("--face-landmarks".into());
        v.push(l.to_string_lossy().into_owned());
    }
    if let Some(m) = matte {
        v.push("--face-matte".into());
        v.push(m.to_string_lossy().into_owned());
    }
    v
}

/// A landmarks file listing the face of each of the `n` frames, in `dir`.
fn landmarks_file(dir: &Path, n: usize) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut map = serde_json::Map::new();
    for i in 0..n {
        map.insert(format!("{i:06}"), serde_json::json!(landmarks(i)));
    }
    let path = dir.join("landmarks.json");
    std::fs::write(&path, serde_json::Value::Object(map).to_string())?;
    Ok(path)
}

fn read(dir: &Path, i: usize) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(image::open(dir.join(format!("{i:06}.png")))?
        .to_rgb8()
        .into_raw())
}

#[test]
fn render_with_face_landmarks_changes_only_the_face_square() -> TestResult {
    let tmp = tempdir("lm")?;
    let n = 5;
    let poses = poses(&tmp, n)?;
    // Frames 0-2 have a face, frame 3 is null, frame 4 is not listed.
    let mut map = serde_json::Map::new();
    for i in 0..3 {
        map.insert(format!("{i:06}"), serde_json::json!(landmarks(i)));
    }
    map.insert("000003".into(), serde_json::Value::Null);
    let lm_file = tmp.join("landmarks.json");
    std::fs::write(&lm_file, serde_json::Value::Object(map).to_string())?;

    let body_dir = tmp.join("body");
    render(&poses, &body_dir, &[])?;
    let face_dir = tmp.join("face");
    let r = render(&poses, &face_dir, &face_args(Some(&lm_file), None))?;
    println!("{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("face pass: 3 frames enhanced, 2 passed through"),
        "{}",
        r.stdout
    );
    let warnings = r.stderr.matches("warning: face pass").count();
    assert_eq!(warnings, 1, "one warning per clip: {}", r.stderr);
    assert!(r.stderr.contains("no face"), "{}", r.stderr);

    let feather = FeatherSettings { erode: 4, blur: 5 };
    for i in 0..n {
        let body = read(&body_dir, i)?;
        let face = read(&face_dir, i)?;
        if i >= 3 {
            assert_eq!(face, body, "frame {i} without a face must pass through");
            continue;
        }
        let m = align::from_landmarks(&landmarks(i), CROP).ok_or("degenerate")?;
        let mask = feather_mask(CROP, &m.invert().ok_or("singular")?, 64, 64, &feather);
        let (mut outside, mut inside, mut changed) = (0, 0, 0);
        for (p, &k) in mask.iter().enumerate() {
            let same = face[3 * p..3 * p + 3] == body[3 * p..3 * p + 3];
            if k == 0.0 {
                outside += 1;
                assert!(
                    same,
                    "frame {i}: pixel {p} outside the feathered square changed"
                );
            } else if k > 0.5 {
                inside += 1;
                changed += usize::from(!same);
            }
        }
        println!(
            "frame {i}: {outside} pixels outside unchanged, {changed} of {inside} inside changed"
        );
        assert!(outside > 2000 && inside > 200);
        assert!(changed * 2 > inside, "frame {i}: the face barely changed");
    }

    // Reverse order and two threads give the same pixels.
    let rev = tmp.join("rev");
    let mut extra = face_args(Some(&lm_file), None);
    extra.extend(["--order", "reverse", "--threads", "2"].map(String::from));
    render(&poses, &rev, &extra)?;
    for i in 0..n {
        assert_eq!(read(&rev, i)?, read(&face_dir, i)?, "frame {i}");
    }

    // The face pass on the body frames rendered above (--body) gives the same pixels.
    let from_body = tmp.join("from_body");
    let mut extra = face_args(Some(&lm_file), None);
    extra.extend(["--body".into(), body_dir.to_string_lossy().into_owned()]);
    let r = render(&poses, &from_body, &extra)?;
    assert!(r.stdout.contains("face pass: 3 frames enhanced"));
    for i in 0..n {
        assert_eq!(
            read(&from_body, i)?,
            read(&face_dir, i)?,
            "frame {i}: --body"
        );
    }
    // Body frames of another size are refused, naming the file.
    let small = tmp.join("small");
    std::fs::create_dir_all(&small)?;
    for i in 0..n {
        image::RgbImage::new(32, 32).save(small.join(format!("{i:06}.png")))?;
    }
    let mut extra = face_args(Some(&lm_file), None);
    extra.extend(["--body".into(), small.to_string_lossy().into_owned()]);
    let e = render(&poses, &tmp.join("bad"), &extra)
        .err()
        .ok_or("32x32 body frames must be refused")?
        .to_string();
    println!("{e}");
    assert!(
        e.contains("000000.png is 32×32") && e.contains("64×64"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn render_with_face_mattes_uses_the_matte_first() -> TestResult {
    let tmp = tempdir("matte")?;
    let n = 3;
    let poses = poses(&tmp, n)?;
    let mattes = tmp.join("mattes");
    std::fs::create_dir_all(&mattes)?;
    // Mattes for frames 0 and 1 (frame 1's is empty); none for frame 2.
    for i in 0..2 {
        let (cx, cy) = head(i);
        let img = image::GrayImage::from_fn(SIZE, SIZE, |x, y| {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            image::Luma([if i == 0 && dx * dx + dy * dy < 100.0 {
                255
            } else {
                0
            }])
        });
        img.save(mattes.join(format!("{i:06}.png")))?;
    }
    let body_dir = tmp.join("body");
    render(&poses, &body_dir, &[])?;
    let face_dir = tmp.join("face");
    let r = render(&poses, &face_dir, &face_args(None, Some(&mattes)))?;
    assert!(
        r.stdout
            .contains("face pass: 1 frames enhanced, 2 passed through"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr.matches("warning: face pass").count(),
        1,
        "{}",
        r.stderr
    );
    assert_ne!(read(&face_dir, 0)?, read(&body_dir, 0)?);
    for i in 1..n {
        assert_eq!(read(&face_dir, i)?, read(&body_dir, i)?, "frame {i}");
    }
    // Without landmarks or mattes the face pass is a named error.
    let mut bad = face_args(None, None);
    bad.truncate(2);
    let s = |v: &Path| v.to_string_lossy().into_owned();
    let mut args = vec![
        "render".to_string(),
        "--model".into(),
        s(&fixtures().join("tiny")),
        "--poses".into(),
        s(&poses),
        "--appearance".into(),
        s(&fixtures().join("photo.png")),
        "--out".into(),
        s(&tmp.join("bad")),
        "--resolution".into(),
        "64".into(),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(bad);
    let r = anchor(&args)?;
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("needs a landmarks file or a face-matte folder"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn temporal_face_renders_and_ignores_request_order() -> TestResult {
    let tmp = tempdir("temporal")?;
    let n = 5;
    let poses = poses(&tmp, n)?;
    let mut map = serde_json::Map::new();
    for i in 0..n {
        if i != 3 {
            map.insert(format!("{i:06}"), serde_json::json!(landmarks(i)));
        }
    }
    let lm_file = tmp.join("landmarks.json");
    std::fs::write(&lm_file, serde_json::Value::Object(map).to_string())?;
    let mut extra = face_args(Some(&lm_file), None);
    extra.extend(
        [
            "--face-temporal",
            "--face-window",
            "2",
            "--face-overlap",
            "1",
            "--face-smooth",
            "0.5",
        ]
        .map(String::from),
    );
    let body_dir = tmp.join("body");
    render(&poses, &body_dir, &[])?;
    let seq = tmp.join("seq");
    let r = render(&poses, &seq, &extra)?;
    assert!(
        r.stdout
            .contains("face pass: 4 frames enhanced, 1 passed through"),
        "{}",
        r.stdout
    );
    let mut rev_args = extra.clone();
    rev_args.extend(["--order", "random", "--threads", "2"].map(String::from));
    let rev = tmp.join("rev");
    render(&poses, &rev, &rev_args)?;
    // A farm split: two processes on two ranges.
    let farm = tmp.join("farm");
    let mut a1 = extra.clone();
    a1.extend(["--frames", "0-1"].map(String::from));
    render(&poses, &farm, &a1)?;
    let mut a2 = extra.clone();
    a2.extend(["--frames", "2-4"].map(String::from));
    render(&poses, &farm, &a2)?;
    // The temporal face on an earlier body render (--body).
    let from_body = tmp.join("from_body");
    let mut body_args = extra.clone();
    body_args.extend(["--body".into(), body_dir.to_string_lossy().into_owned()]);
    render(&poses, &from_body, &body_args)?;
    for i in 0..n {
        let s = read(&seq, i)?;
        assert_eq!(read(&from_body, i)?, s, "frame {i}: --body");
        assert_eq!(read(&rev, i)?, s, "frame {i}: order/threads");
        assert_eq!(read(&farm, i)?, s, "frame {i}: farm split");
        let body = read(&body_dir, i)?;
        if i == 3 {
            assert_eq!(s, body, "frame 3 has no face");
        } else {
            assert_ne!(s, body, "frame {i}: the face must change");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn anchor_synth_outputs_drive_the_face_pass() -> TestResult {
    let tmp = tempdir("synth")?;
    let s = |v: &Path| v.to_string_lossy().into_owned();
    let synth = tmp.join("synth");
    let r = anchor(
        &[
            "synth",
            "--out",
            &s(&synth),
            "--identities",
            "0",
            "--frames",
            "40",
            "--size",
            "128",
            "--threads",
            "1",
        ]
        .map(String::from),
    )?;
    assert!(r.ok, "{}", r.stderr);
    let held = synth.join("heldout");
    let base = |out: &Path| -> Vec<String> {
        [
            "render",
            "--model",
            &s(&fixtures().join("tiny")),
            "--poses",
            &s(&held.join("mesh")),
            "--appearance",
            &s(&held.join("reference.png")),
            "--out",
            &s(out),
            "--resolution",
            "128",
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
        .map(String::from)
        .to_vec()
    };
    let body = tmp.join("body");
    let r = anchor(&base(&body))?;
    assert!(r.ok, "{}", r.stderr);
    for (tag, lm, matte) in [
        ("lm", Some(held.join("landmarks.json")), None),
        ("matte", None, Some(held.join("face_matte"))),
    ] {
        let out = tmp.join(tag);
        let mut args = base(&out);
        args.extend(face_args(lm.as_deref(), matte.as_deref()));
        let r = anchor(&args)?;
        assert!(r.ok, "{tag}: {}", r.stderr);
        assert!(
            r.stdout
                .contains("face pass: 4 frames enhanced, 0 passed through"),
            "{tag}: {}",
            r.stdout
        );
        for i in 0..4 {
            let (a, b) = (read(&out, i)?, read(&body, i)?);
            let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            // The head is small in a full-body frame: the pasted square is a small part of it.
            println!("{tag} frame {i}: {changed} of {} values changed", a.len());
            assert!(
                changed > 100 && changed * 4 < a.len(),
                "{tag} frame {i}: {changed}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn face_parser_flag_changes_the_mask_and_rejects_a_wrong_checkpoint() -> TestResult {
    let tmp = tempdir("parser")?;
    let n = 2;
    let poses = poses(&tmp, n)?;
    let lm_file = landmarks_file(&tmp, n)?;

    let template_dir = tmp.join("template");
    render(&poses, &template_dir, &face_args(Some(&lm_file), None))?;
    // The width-reduced parity checkpoint, in the legacy format of the published 79999_iter.pth.
    let parser = fixtures().join("bisenet_tiny_legacy.pth");
    let mut extra = face_args(Some(&lm_file), None);
    extra.extend(["--face-parser".to_string(), parser.to_string_lossy().into()]);
    let parsed_dir = tmp.join("parsed");
    let r = render(&poses, &parsed_dir, &extra)?;
    assert!(
        r.stdout.contains("face pass: 2 frames enhanced"),
        "{}",
        r.stdout
    );
    let differing = (0..n)
        .map(|i| {
            Ok::<_, Box<dyn std::error::Error>>(read(&template_dir, i)? != read(&parsed_dir, i)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    println!("frames whose output differs from the template-mask run: {differing:?}");
    assert!(
        differing.iter().all(|&d| d),
        "the parser's mask was not used"
    );

    // Another network's weights are a named error, and the render stops.
    let vae = fixtures().join("tiny/vae/diffusion_pytorch_model.safetensors");
    let mut bad = face_args(Some(&lm_file), None);
    bad.extend(["--face-parser".to_string(), vae.to_string_lossy().into()]);
    let err = render(&poses, &tmp.join("bad"), &bad)
        .err()
        .ok_or("a VAE checkpoint was accepted as a face parser")?
        .to_string();
    println!("{err}");
    assert!(err.contains("not a face-parsing.PyTorch BiSeNet"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// `(read, published)` of the shared-cache summary line.
fn shared_counts(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("shared cache"))
        .unwrap_or_else(|| panic!("no shared-cache line in {stdout}"));
    let num = |word: &str| -> u64 {
        let before = line.split(word).next().unwrap_or_default();
        before
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap()
    };
    (num(" read"), num(" published"))
}

#[test]
fn a_shared_cache_carries_the_face_pass_to_the_other_processes() -> TestResult {
    let tmp = tempdir("shared")?;
    let n = 4;
    let poses = poses(&tmp, n)?;
    let lm_file = landmarks_file(&tmp, n)?;
    for temporal in [false, true] {
        // Two processes, one after the other, on one shared folder each: body only, then with
        // the face pass.
        let runs = |tag: &str, face: bool| -> Result<(Run, Run), Box<dyn std::error::Error>> {
            let shared = tmp.join(format!("shared-{tag}-{temporal}"));
            let mut extra = vec!["--shared-cache".to_string(), shared.display().to_string()];
            if face {
                extra.extend(face_args(Some(&lm_file), None));
                if temporal {
                    extra.extend(["--face-temporal".into(), "--face-window".into(), "2".into()]);
                    extra.extend(["--face-overlap".into(), "1".into()]);
                }
            }
            let a = render(&poses, &tmp.join(format!("{tag}-a-{temporal}")), &extra)?;
            let b = render(&poses, &tmp.join(format!("{tag}-b-{temporal}")), &extra)?;
            Ok((a, b))
        };
        let (body_a, body_b) = runs("body", false)?;
        let (face_a, face_b) = runs("face", true)?;
        let (body_pub, face_pub) = (
            shared_counts(&body_a.stdout).1,
            shared_counts(&face_a.stdout).1,
        );
        assert!(
            face_pub > body_pub,
            "temporal {temporal}: the face pass published nothing ({face_pub} vs {body_pub})"
        );
        let (face_read, face_b_pub) = shared_counts(&face_b.stdout);
        assert_eq!(face_b_pub, 0, "temporal {temporal}: {}", face_b.stdout);
        assert!(
            face_read > shared_counts(&body_b.stdout).0,
            "temporal {temporal}: the second process did not read the faces: {}",
            face_b.stdout
        );
        for i in 0..n {
            assert_eq!(
                read(&tmp.join(format!("face-a-{temporal}")), i)?,
                read(&tmp.join(format!("face-b-{temporal}")), i)?,
                "temporal {temporal}: frame {i}"
            );
        }
    }
    Ok(())
}
