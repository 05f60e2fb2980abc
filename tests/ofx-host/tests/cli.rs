//! `ofx-render` as a command-line host: `--list-params` shows the plugin's parameters with the
//! script names and defaults host scripts and farm jobs rely on (issue 2), and `--help` reads
//! as a manual.

mod common;

use common::*;

#[test]
fn list_params_shows_the_stable_script_names_and_defaults() {
    let run = ofx_render(&[
        "--bundle",
        bundle().to_str().expect("utf-8"),
        "--plugin",
        PLUGIN_ID,
        "--list-params",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let line = |name: &str| -> String {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from --list-params:\n{}", run.stdout))
            .to_string()
    };
    for (name, kind, default) in [
        ("modelFolder", "String", "default \"\""),
        ("seed", "Integer", ""),
        ("steps", "Integer", "default [20]"),
        ("guidance", "Double", "default [7.5]"),
        ("controlScale", "Double", "default [2.0]"),
        ("controlResiduals", "Choice", "options: original | standard"),
        ("window", "Integer", "default [16]"),
        ("overlap", "Integer", "default [4]"),
        (
            "fusion",
            "Choice",
            "options: flat | pyramid | overlap-linear",
        ),
        ("tail", "Choice", "options: paper | full"),
        ("resolution", "Integer", "default [512]"),
        ("faceEnhance", "Boolean", "default [0]"),
        ("faceModelFolder", "String", ""),
        ("device", "Choice", ""),
        ("precision", "Choice", ""),
        ("cacheMiB", "Integer", ""),
    ] {
        let l = line(name);
        assert!(
            l.contains(kind) && l.contains(default),
            "{name}: {l:?} should show {kind} and {default:?}"
        );
    }
}

#[test]
fn help_documents_every_host_emulation() {
    let run = ofx_render(&["--help"]);
    assert_eq!(run.code, Some(0));
    for flag in [
        "--threads",
        "--order",
        "--seed",
        "--depth",
        "--per-frame-sequence",
        "--clones",
        "--instance-per-frame",
        "--negative-rowbytes",
        "--no-temporal",
        "--abort-after",
        "--appearance",
        "--param",
        "--frames",
        "--context",
        "--host mlt",
        "--withhold",
        "Exit status",
    ] {
        assert!(run.stdout.contains(flag), "--help lacks {flag}");
    }
}
