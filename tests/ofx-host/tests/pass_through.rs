//! The plugin's pass-through (until the engine lands, issue 2) must be pixel-exact through
//! `ofx-render` under every host behaviour we emulate: 24 frames of a 67×45 RGBA sequence come
//! back bit-identical.

mod common;

use common::*;

/// Render the test sequence with `extra` arguments; `Err` explains any failure.
fn render_exact(input: &str, extra: &[&str]) -> Result<(), String> {
    let out = TempDir::new("out");
    let out_s = out
        .path()
        .to_str()
        .ok_or("non-utf-8 temp path")?
        .to_string();
    let mut args = base_args(input, &out_s);
    args.extend_from_slice(extra);
    let run = ofx_render(&args);
    if run.code != Some(0) {
        return Err(format!(
            "{extra:?}: exit {:?}\nstdout: {}\nstderr: {}",
            run.code, run.stdout, run.stderr
        ));
    }
    if !run
        .stdout
        .contains(&format!("rendered {FRAMES} frame(s) (0-23)"))
    {
        return Err(format!("{extra:?}: unexpected summary {:?}", run.stdout));
    }
    let written = pngs(out.path());
    if written.len() != FRAMES {
        return Err(format!(
            "{extra:?}: {} frames written, expected {FRAMES}",
            written.len()
        ));
    }
    compare_frames(out.path(), 0..FRAMES).map_err(|e| format!("{extra:?}: {e}"))
}

fn input() -> (TempDir, String) {
    let dir = TempDir::new("in");
    write_sequence(dir.path());
    let s = dir.path().to_str().expect("utf-8").to_string();
    (dir, s)
}

/// The matrix: every combination of threads {1, 4}, order {sequential, random},
/// depth {byte, float}, rowBytes {positive, negative} and instances {1, 3 render clones}.
#[test]
fn every_combination_is_pixel_exact() {
    let (_in, input) = input();
    let mut failures = Vec::new();
    let mut runs = 0;
    for threads in ["1", "4"] {
        for order in ["sequential", "random"] {
            for depth in ["byte", "float"] {
                for negative in [false, true] {
                    for clones in ["1", "3"] {
                        let mut extra = vec![
                            "--threads",
                            threads,
                            "--order",
                            order,
                            "--seed",
                            "7",
                            "--depth",
                            depth,
                            "--clones",
                            clones,
                        ];
                        if negative {
                            extra.push("--negative-rowbytes");
                        }
                        runs += 1;
                        if let Err(e) = render_exact(&input, &extra) {
                            failures.push(e);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 32);
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Natron/MLT habits: Begin/EndSequenceRender around each frame, a new instance per frame,
/// no temporal access, repeated Load; plus the other depths, padded rows, reverse order and the
/// General context with and without an Appearance image.
#[test]
fn host_emulations_are_pixel_exact() {
    let (_in, input) = input();
    let appearance = format!("{input}/frame_0003.png");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "--appearance",
            &appearance,
            "--threads",
            "2",
            "--depth",
            "float",
        ],
        vec![
            "--per-frame-sequence",
            "--threads",
            "4",
            "--order",
            "random",
            "--depth",
            "float",
        ],
        vec![
            "--per-frame-sequence",
            "--clones",
            "2",
            "--threads",
            "2",
            "--negative-rowbytes",
        ],
        vec![
            "--instance-per-frame",
            "--negative-rowbytes",
            "--no-temporal",
        ],
        vec![
            "--instance-per-frame",
            "--threads",
            "4",
            "--order",
            "random",
            "--depth",
            "float",
        ],
        vec!["--depth", "short", "--order", "reverse"],
        vec!["--depth", "half", "--threads", "4", "--negative-rowbytes"],
        vec!["--row-padding", "13", "--depth", "float", "--threads", "3"],
        vec![
            "--context",
            "general",
            "--threads",
            "4",
            "--order",
            "random",
            "--seed",
            "99",
        ],
        vec![
            "--no-temporal",
            "--threads",
            "4",
            "--clones",
            "4",
            "--depth",
            "float",
        ],
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|extra| render_exact(&input, extra).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A printf pattern in and out, and a sub-range: frames 5-9 only, numbered from the names.
#[test]
fn pattern_input_output_and_frame_range() {
    let (inp, _) = input();
    let out = TempDir::new("out");
    let pattern_in = format!("{}/frame_%04d.png", inp.path().display());
    let pattern_out = format!("{}/o.%03d.png", out.path().display());
    let mut args = base_args(&pattern_in, &pattern_out);
    args.extend_from_slice(&["--frames", "5-9", "--threads", "2"]);
    let run = ofx_render(&args);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains("rendered 5 frame(s) (5-9)"),
        "{}",
        run.stdout
    );
    assert_eq!(
        pngs(out.path()),
        vec![
            "o.005.png",
            "o.006.png",
            "o.007.png",
            "o.008.png",
            "o.009.png"
        ]
    );
    for n in 5..10 {
        let got = image::open(out.join(&format!("o.{n:03}.png")))
            .expect("read")
            .to_rgba8();
        assert_eq!(got, test_frame(n), "frame {n}");
    }
}

/// The OpenFX demo host's parameter support (no string parameters, integer and choice values
/// unreadable): a plugin must fall back to its defaults and still pass frames through. The
/// same situation as `demo_host.rs`, without needing g++.
#[test]
fn minimal_parameter_host_is_pixel_exact() {
    let (_in, input) = input();
    if let Err(e) = render_exact(&input, &["--minimal-params", "--threads", "2"]) {
        panic!("{e}");
    }
}
