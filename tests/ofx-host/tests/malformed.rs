//! Malformed input: each case must end with a failed status from the plugin, the plugin's own
//! message text on stderr, exit status 1 (not a signal: no crash), and nothing half-written.
//! The texts are the plugin's (plugin/effect/src/error.rs); stable substrings are asserted.

mod common;

use common::*;

struct Case {
    name: &'static str,
    extra: Vec<&'static str>,
    /// Substring of the plugin's message (echoed by the host as "plugin error: …").
    plugin_says: &'static str,
    /// Substring of the host's final error line.
    host_says: &'static str,
}

fn run_case(input: &str, case: &Case) -> Result<(), String> {
    let out = TempDir::new("bad");
    let out_s = out.path().to_str().ok_or("non-utf-8")?.to_string();
    let mut args = base_args(input, &out_s);
    args.extend_from_slice(&case.extra);
    let run = ofx_render(&args);
    let ctx = format!(
        "[{}] exit {:?}\nstdout: {}\nstderr: {}",
        case.name, run.code, run.stdout, run.stderr
    );
    if run.code != Some(1) {
        return Err(format!("expected exit status 1 (a clean failure): {ctx}"));
    }
    if !run.stderr.contains(case.plugin_says) {
        return Err(format!(
            "plugin message {:?} missing: {ctx}",
            case.plugin_says
        ));
    }
    let last = run.stderr.lines().last().unwrap_or_default();
    if !last.starts_with("ofx-render: error: ") || !last.contains(case.host_says) {
        return Err(format!(
            "final error line should contain {:?}: {ctx}",
            case.host_says
        ));
    }
    if !run.stdout.is_empty() {
        return Err(format!("stdout must stay empty on failure: {ctx}"));
    }
    Ok(())
}

#[test]
fn malformed_inputs_fail_cleanly_with_the_plugins_message() {
    let input = TempDir::new("in");
    write_sequence(input.path());
    let input_s = input.path().to_str().expect("utf-8").to_string();
    let render_failed = "OfxImageEffectActionRender failed with kOfxStatFailed at frame 0";
    let cases = [
        Case {
            name: "Source unconnected",
            extra: vec!["--missing-source", "unconnected"],
            plugin_says: "plugin error: The Source clip is not connected",
            host_says: render_failed,
        },
        Case {
            name: "Source has no image",
            extra: vec!["--missing-source", "no-image", "--threads", "4"],
            plugin_says: "plugin error: The host returned no Source image at frame",
            host_says: "OfxImageEffectActionRender failed with kOfxStatFailed",
        },
        Case {
            name: "model folder does not exist",
            extra: vec!["--param", "modelFolder=/nonexistent/anchor-models"],
            plugin_says: "plugin error: Model folder /nonexistent/anchor-models does not exist",
            host_says: render_failed,
        },
        Case {
            name: "zero-size image",
            extra: vec!["--zero-size-source", "--depth", "float"],
            plugin_says: "plugin error: The Source image at frame 0 is empty (0x0 pixels)",
            host_says: render_failed,
        },
        Case {
            name: "unsupported depth",
            extra: vec!["--raw-depth", "com.example.BitDepth12"],
            plugin_says: "plugin error: The Source image at frame 0 has an unsupported pixel format (depth com.example.BitDepth12",
            host_says: render_failed,
        },
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_case(&input_s, c).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// `--abort-after 5`: frames 0-4 are written exactly, frame 5 sees the abort flag and the plugin
/// fails it with its message; nothing after it is rendered.
#[test]
fn abort_mid_range() {
    let input = TempDir::new("in");
    write_sequence(input.path());
    let out = TempDir::new("out");
    let (i, o) = (
        input.path().to_str().expect("utf-8"),
        out.path().to_str().expect("utf-8"),
    );
    let mut args = base_args(i, o);
    args.extend_from_slice(&["--abort-after", "5"]);
    let run = ofx_render(&args);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("plugin log: Rendering frame 5 was aborted by the host"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "render aborted by the host after 5 frame(s); frame 5: OfxImageEffectActionRender \
             failed with kOfxStatFailed at frame 5"
        ),
        "{}",
        run.stderr
    );
    let written = pngs(out.path());
    assert_eq!(written.len(), 5, "{written:?}");
    compare_frames(out.path(), 0..5).expect("frames before the abort are exact");
}

/// Usage mistakes are exit status 2 with a message naming the problem, before any render.
#[test]
fn usage_errors() {
    let input = TempDir::new("in");
    write_sequence(input.path());
    let out = TempDir::new("out");
    let (i, o) = (
        input.path().to_str().expect("utf-8"),
        out.path().to_str().expect("utf-8"),
    );
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--param", "noSuchParam=1"],
            2,
            "the plugin has no parameter \"noSuchParam\"",
        ),
        (
            vec!["--param", "steps=many"],
            2,
            "steps: expected 1 integer(s), got \"many\"",
        ),
        (
            vec!["--param", "fusion=cubic"],
            2,
            "fusion: \"cubic\" is not one of the options",
        ),
        (vec!["--param", "steps"], 2, "expected NAME=VALUE"),
        (vec!["--clones", "2", "--instance-per-frame"], 2, "pick one"),
        (vec!["--frames", "20-30"], 1, "frames 20-30 requested, but"),
    ];
    for (extra, code, says) in cases {
        let mut args = base_args(i, o);
        args.extend_from_slice(&extra);
        let run = ofx_render(&args);
        let ok = run.code == Some(code) && run.stderr.contains(says);
        assert!(ok, "{extra:?}: exit {:?}, stderr: {}", run.code, run.stderr);
        assert!(pngs(out.path()).is_empty(), "{extra:?} wrote frames");
    }
    let run = ofx_render(&["--bundle", "/nonexistent.ofx.bundle", "--input", i]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("cannot load bundle /nonexistent.ofx.bundle"),
        "{}",
        run.stderr
    );
}
