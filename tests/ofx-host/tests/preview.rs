//! Previews that do not pay for the clip (issue 15): a host viewer's render (`--interactive`:
//! Begin/EndSequenceRender with `kOfxPropIsInteractive` = 1), a draft render (`--draft`:
//! `kOfxImageEffectPropRenderQualityDraft` = 1) and the `preview` parameter all render the same
//! window-local preview, byte for byte the frame `anchor render --preview` writes, for about
//! Steps network batches; a plain (final) render of the frame is exact (the frame
//! `anchor render` writes without `--preview`), differs from the preview and costs its whole
//! dependency cone.
//!
//! Settings: the tiny test model, 64² working resolution, 4 DDIM steps, window 4, overlap 1, a
//! 16-frame mesh clip (five windows), frame 8 alone rendered, seed 42.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{anchor_exe, ofx_render, ofx_render_logged, LoggedRun, TempDir};
use image::{Rgb, RgbImage};

/// Frames in the clip.
const LEN: usize = 16;
/// Working resolution (and the mesh frames' size, so nothing is resized).
const RES: u32 = 64;
const STEPS: u64 = 4;
const WINDOW: usize = 4;
const OVERLAP: usize = 1;
const SEED: u64 = 42;
/// The frame rendered: in the middle, so its final cone reaches over several windows.
const FRAME: usize = 8;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Mesh-render-like frame `n`: a dark textured background and a moving body blob and limb. Its
/// own motion, not `engine_render.rs`'s poses: with those, frame 8's preview and final render
/// coincide at these settings and the test could not tell them apart.
fn mesh_frame(n: usize) -> RgbImage {
    let n = n as f32;
    RgbImage::from_fn(RES, RES, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let cx = 26.0 + 9.0 * (n * 0.23).sin();
        let cy = 30.0 + 4.0 * (n * 0.17).cos();
        let d = ((xf - cx).powi(2) + ((yf - cy) * 0.6).powi(2)).sqrt();
        if d < 13.0 {
            let shade = (205.0 - d * 6.0) as u8;
            Rgb([shade, (shade as f32 * 0.8) as u8, (110.0 + n * 4.0) as u8])
        } else if (yf - cy - 0.5 * (xf - cx)).abs() < 2.5 && xf > cx {
            Rgb([90, 160, (40 + (n as u32 * 9) % 100) as u8])
        } else {
            Rgb([(x * 3 % 32) as u8, (y % 16) as u8, 20])
        }
    })
}

/// The clip as `mesh_0000.png` … `mesh_0015.png`: frame numbers 0-15 for both `ofx-render`
/// (a directory is numbered from 0 in name order) and `anchor render` (numbers from the names).
fn write_clip() -> TempDir {
    let dir = TempDir::new("preview-clip");
    for n in 0..LEN {
        mesh_frame(n)
            .save(dir.join(&format!("mesh_{n:04}.png")))
            .expect("write mesh frame");
    }
    dir
}

/// The file name of frame `n`, in the input and in both outputs.
fn name(n: usize) -> String {
    format!("mesh_{n:04}.png")
}

/// Reads frame `n` of `dir` as RGB, checking the size (and, for the effect's RGBA output, that
/// it is opaque).
fn read_rgb(dir: &Path, n: usize, what: &str) -> Vec<u8> {
    let path = dir.join(name(n));
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", path.display()))
        .to_rgba8();
    assert_eq!(
        img.dimensions(),
        (RES, RES),
        "{what}: frame {n} has the wrong size"
    );
    if let Some((x, y, p)) = img.enumerate_pixels().find(|(_, _, p)| p.0[3] != 255) {
        panic!(
            "{what}: frame {n} is not opaque: pixel ({x}, {y}) is {:?}",
            p.0
        );
    }
    img.pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect()
}

/// `Err` naming the first pixel where `a` (`what_a`) and `b` (`what_b`) differ.
fn same_pixels(a: &[u8], b: &[u8], what_a: &str, what_b: &str) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!(
            "{what_a} has {} bytes, {what_b} {}",
            a.len(),
            b.len()
        ));
    }
    let differing = a
        .chunks_exact(3)
        .zip(b.chunks_exact(3))
        .filter(|(p, q)| p != q)
        .count();
    match a
        .chunks_exact(3)
        .zip(b.chunks_exact(3))
        .position(|(p, q)| p != q)
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what_a} and {what_b} differ in {differing} of {} pixels; first at ({}, {}): {:?} vs \
             {:?}",
            a.len() / 3,
            i % RES as usize,
            i / RES as usize,
            &a[i * 3..i * 3 + 3],
            &b[i * 3..i * 3 + 3]
        )),
    }
}

/// One `ofx-render` run of frame `FRAME` and what it wrote.
struct Rendered {
    what: String,
    frame: Vec<u8>,
    run: LoggedRun,
}

impl Rendered {
    /// The network calls the plugin logged for its renders ("frame T: N network call(s) by this
    /// render, …"), summed over the run.
    fn network_calls(&self) -> u64 {
        self.run
            .log
            .lines()
            .filter_map(|l| {
                let (_, rest) = l
                    .split_once(" network call(s) by this render")?
                    .0
                    .rsplit_once(": ")?;
                rest.trim().parse::<u64>().ok()
            })
            .sum()
    }

    /// The Render calls the plugin logged as previews.
    fn previews(&self) -> usize {
        self.run
            .log
            .lines()
            .filter(|l| l.contains(&format!("Render at {FRAME}: preview")))
            .count()
    }
}

/// `ofx-render` of frame `FRAME` of `clip` in the general context, the photo as Appearance,
/// with `extra` arguments.
fn ofx_frame(clip: &Path, what: &str, extra: &[&str]) -> Rendered {
    let out = TempDir::new("preview-ofx-out");
    let mut args: Vec<String> = vec![
        "--input".into(),
        clip.display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--appearance".into(),
        fixtures().join("photo.png").display().to_string(),
        "--frames".into(),
        FRAME.to_string(),
    ];
    for p in [
        format!("modelFolder={}", fixtures().join("tiny").display()),
        format!("resolution={RES}"),
        format!("steps={STEPS}"),
        format!("window={WINDOW}"),
        format!("overlap={OVERLAP}"),
        format!("seed={SEED}"),
        "guidance=7.5".into(),
        "controlScale=2.0".into(),
        "device=CPU".into(),
    ] {
        args.push("--param".into());
        args.push(p);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ofx_render_logged(&args, &[]);
    let tail = run
        .log
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        run.code,
        Some(0),
        "{what}: ofx-render failed\nstdout: {}\nstderr: {}\nplugin log (tail): {tail}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout
            .contains(&format!("rendered 1 frame(s) ({FRAME}-{FRAME})")),
        "{what}: ofx-render did not render frame {FRAME} alone: {}",
        run.stdout
    );
    let frame = read_rgb(out.path(), FRAME, what);
    let rendered = Rendered {
        what: what.into(),
        frame,
        run,
    };
    eprintln!(
        "{what}: {} network call(s), {:.1} s",
        rendered.network_calls(),
        rendered.run.seconds
    );
    rendered
}

/// `anchor render` of frame `FRAME` of `clip` with the same settings (`--preview` when
/// `preview`): the frame (RGB) and the network calls it printed.
fn cli_frame(clip: &Path, preview: bool) -> (Vec<u8>, u64) {
    let out = TempDir::new("preview-cli-out");
    let mut cmd = Command::new(anchor_exe());
    cmd.arg("render")
        .arg("--model")
        .arg(fixtures().join("tiny"))
        .arg("--poses")
        .arg(clip)
        .arg("--appearance")
        .arg(fixtures().join("photo.png"))
        .arg("--out")
        .arg(out.path())
        .args(["--resolution", &RES.to_string()])
        .args(["--steps", &STEPS.to_string()])
        .args(["--window", &WINDOW.to_string()])
        .args(["--overlap", &OVERLAP.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--cfg", "7.5", "--control-scale", "2.0"])
        .args(["--device", "cpu", "--precision", "f32", "--threads", "1"])
        .args(["--frames", &FRAME.to_string()])
        .args(["--progress", "none"]);
    if preview {
        cmd.arg("--preview");
    }
    let what = if preview {
        "anchor render --preview"
    } else {
        "anchor render"
    };
    let run = cmd.output().expect("spawn anchor render");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{what} failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    // "rendered N frames of L (W windows x S steps): C network calls, …"
    let calls = stdout
        .split_once("): ")
        .and_then(|(_, rest)| rest.split_once(" network calls"))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{what}: no network-call count in its summary: {stdout}"));
    (read_rgb(out.path(), FRAME, what), calls)
}

#[test]
fn interactive_draft_and_the_preview_parameter_render_the_clis_preview_and_final_stays_exact() {
    let clip = write_clip();
    let clip = clip.path();

    let final_render = ofx_frame(clip, "final (no flag)", &[]);
    let interactive = ofx_frame(clip, "--interactive", &["--interactive"]);
    let param = ofx_frame(clip, "--param preview=on", &["--param", "preview=on"]);
    let draft = ofx_frame(clip, "--draft", &["--draft"]);
    let (cli_preview, cli_preview_calls) = cli_frame(clip, true);
    let (cli_final, cli_final_calls) = cli_frame(clip, false);

    // The viewer's sequence was seen as interactive, and Render previewed because of it.
    assert!(
        interactive
            .run
            .log
            .contains("BeginSequenceRender: frames [8.0, 8.0], interactive Some(true)"),
        "--interactive: the plugin did not log an interactive BeginSequenceRender over [8, 8]"
    );
    for r in [&interactive, &draft] {
        assert_eq!(
            r.previews(),
            1,
            "{}: the plugin should log one Render at {FRAME} as a preview",
            r.what
        );
    }
    assert_eq!(
        final_render.previews(),
        0,
        "final (no flag): the plugin logged a Render as a preview"
    );

    // Every preview is the CLI's preview, byte for byte.
    for r in [&interactive, &param, &draft] {
        if let Err(e) = same_pixels(
            &r.frame,
            &cli_preview,
            &r.what,
            "anchor render --preview --frames 8",
        ) {
            panic!("frame {FRAME}: {e}");
        }
    }
    if let Err(e) = same_pixels(
        &interactive.frame,
        &param.frame,
        "--interactive",
        "--param preview=on",
    ) {
        panic!("frame {FRAME}: {e}");
    }

    // The final render is exact: the CLI's final frame, not the preview.
    if let Err(e) = same_pixels(
        &final_render.frame,
        &cli_final,
        "final (no flag)",
        "anchor render --frames 8",
    ) {
        panic!("frame {FRAME}: {e}");
    }
    assert!(
        final_render.frame != interactive.frame,
        "frame {FRAME}: the final render equals the preview byte for byte; the test cannot tell \
         them apart (the final frame must take its neighbours' windows into account)"
    );

    // A preview costs its window's steps; the final frame its whole cone.
    for r in [&interactive, &param, &draft] {
        let calls = r.network_calls();
        assert!(
            (1..=2 * STEPS).contains(&calls),
            "{}: the preview of frame {FRAME} ran {calls} network batches; expected 1 to {} \
             (2 × steps)",
            r.what,
            2 * STEPS
        );
    }
    let final_calls = final_render.network_calls();
    assert!(
        final_calls > 2 * STEPS && final_calls > interactive.network_calls(),
        "final (no flag): frame {FRAME} ran {final_calls} network batches, not more than the \
         preview's {} (and 2 × steps = {})",
        interactive.network_calls(),
        2 * STEPS
    );
    assert_eq!(
        final_calls, cli_final_calls,
        "network batches of the final frame: the plugin's log vs anchor render's summary"
    );
    assert_eq!(
        interactive.network_calls(),
        cli_preview_calls,
        "network batches of the preview: the plugin's log (--interactive) vs anchor render \
         --preview's summary"
    );
}

#[test]
fn help_documents_interactive_and_draft() {
    let run = ofx_render(&["--help"]);
    assert_eq!(run.code, Some(0), "--help failed: {}", run.stderr);
    for flag in ["--interactive", "--draft"] {
        assert!(
            run.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            run.stdout
        );
    }
}
