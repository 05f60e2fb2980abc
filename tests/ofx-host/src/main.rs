//! `ofx-render`: render an image sequence through an OpenFX plugin from the command line.
//!
//! The test host of Make-Your-Anchor, and a minimal host for pipelines: stdout carries a
//! one-line summary, stderr the plugin's messages and any error; the exit status is non-zero
//! on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use ofx_host::{Context, Depth, HostModel, Order, RenderOptions, RowLayout, SourceMode};

const AFTER_HELP: &str = "\
Input and output:
  A directory input is its *.png files in name order, numbered from 0. A printf pattern
  (shots/a.%04d.png) takes frame numbers from the file names. Frames are read as 8-bit RGBA.
  A directory output gets the input's file names; a pattern output gets frame numbers.
  Pass-through is exact: byte images carry the 8-bit values; short images carry v*257; half
  and float images carry v/255 and are written back as round(clamp(x,0,1)*255).

Host emulation (how real hosts call plugins):
  Natron        --context general --threads 4 --per-frame-sequence   (FullySafe plugins)
  Natron clones --clones 4 --threads 4                               (InstanceSafe plugins)
  MLT (melt)    --host mlt   (Kdenlive, Shotcut: Filter context, byte images with negative
                rowBytes, no temporal access, no clip or effect frame range, an instance and
                Begin/EndSequenceRender per frame, Load three times)
  Resolve       --depth float --context general
  hostDemo      --minimal-params  (the OpenFX association's example host)
  A viewer      --interactive (sequences and renders flagged interactive), --draft (draft
                render quality); without them every render is a final one.
  A host that lacks a property: --withhold OfxImageEffectPropFrameRange (repeatable; the
  property suite answers kOfxStatErrUnknown). SCOPE:NAME withholds it only on property sets
  whose description starts with SCOPE: host, effect instance, clip Source, image, render args,
  sequence args. After a successful run, stderr says how many reads each one refused.

Examples:
  ofx-render --bundle MakeYourAnchor.ofx.bundle --input mesh/ --output out/ \\
      --param modelFolder=/models/anchor --param steps=25
  ofx-render --bundle MakeYourAnchor.ofx.bundle --list-params

Exit status: 0 on success; 1 if the plugin failed, broke the OFX API, or the run was
aborted; 2 for bad command-line usage (including unknown parameters or values).";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliContext {
    Filter,
    General,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliOrder {
    Sequential,
    Reverse,
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDepth {
    Byte,
    Short,
    Half,
    Float,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliHost {
    /// Only the behaviours the other options select.
    Generic,
    /// MLT 7.40's openfx module (melt, Kdenlive, Shotcut).
    Mlt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliMissing {
    /// Source clip not connected.
    Unconnected,
    /// Source connected, but the host has no image for it.
    NoImage,
}

/// Render an image sequence through an OpenFX image effect.
#[derive(Debug, Parser)]
#[command(name = "ofx-render", version, after_help = AFTER_HELP)]
struct Cli {
    /// Plugin bundle (.ofx.bundle directory) or .ofx binary.
    #[arg(long, value_name = "PATH")]
    bundle: PathBuf,
    /// Plugin identifier; may be omitted when the bundle holds one effect.
    #[arg(long, value_name = "ID")]
    plugin: Option<String>,
    /// Context to instantiate [default: general with --appearance, else filter].
    #[arg(long, value_enum)]
    context: Option<CliContext>,
    /// Input sequence: a directory of PNGs or a printf pattern.
    #[arg(
        long,
        value_name = "DIR|PATTERN",
        required_unless_present = "list_params"
    )]
    input: Option<String>,
    /// Output directory or printf pattern; without it frames are rendered and discarded.
    #[arg(long, value_name = "DIR|PATTERN")]
    output: Option<String>,
    /// Inclusive frame range, e.g. 0-23 or 5 [default: the whole input].
    #[arg(long, value_name = "A-B")]
    frames: Option<String>,
    /// Set a parameter by script name (repeatable): numbers, a,b for 2D, on/off,
    /// choice index or label, text.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Edit a parameter as a user would (repeatable): after the instance is created, the host
    /// sets it and sends Begin/InstanceChanged/EndInstanceChanged (reason OfxChangeUserEdited).
    #[arg(long = "user-edit", value_name = "NAME=VALUE")]
    user_edits: Vec<String>,
    /// Print the plugin's parameters (name, type, default, options) and exit.
    #[arg(long)]
    list_params: bool,
    /// Concurrent Render calls (on one instance, or spread over --clones).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Order in which frames are rendered.
    #[arg(long, value_enum, default_value = "sequential")]
    order: CliOrder,
    /// Seed for --order random.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Pixel depth of the images the host provides.
    #[arg(long, value_enum, default_value = "byte")]
    depth: CliDepth,
    /// Appearance image (general context).
    #[arg(long, value_name = "IMAGE")]
    appearance: Option<PathBuf>,
    /// FaceMatte sequence (general context): a directory of PNGs or a printf pattern, numbered
    /// like the input; a missing frame has no image.
    #[arg(long, value_name = "DIR|PATTERN")]
    face_matte: Option<String>,
    /// Emulate a real host as a whole (see below); other options add to it.
    #[arg(
        long,
        value_enum,
        default_value = "generic",
        help_heading = "Host emulation"
    )]
    host: CliHost,
    /// Withhold a property: the property suite answers kOfxStatErrUnknown for it, as a host
    /// that does not set it (repeatable; NAME or SCOPE:NAME, see below).
    #[arg(
        long = "withhold",
        value_name = "PROP",
        help_heading = "Host emulation"
    )]
    withhold: Vec<String>,
    /// Begin/EndSequenceRender around every frame (Natron, MLT).
    #[arg(long, help_heading = "Host emulation")]
    per_frame_sequence: bool,
    /// N instances share the frames (Natron render clones).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        help_heading = "Host emulation"
    )]
    clones: usize,
    /// A new instance for every frame (MLT).
    #[arg(long, help_heading = "Host emulation")]
    instance_per_frame: bool,
    /// Bottom-up image memory: negative rowBytes (MLT).
    #[arg(long, help_heading = "Host emulation")]
    negative_rowbytes: bool,
    /// Extra bytes at the end of every image row.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "BYTES",
        help_heading = "Host emulation"
    )]
    row_padding: usize,
    /// No temporal clip access: every fetch returns the frame being rendered (MLT).
    #[arg(long, help_heading = "Host emulation")]
    no_temporal: bool,
    /// Send N extra Load actions before Describe (MLT), each matched by an Unload at the end.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        help_heading = "Host emulation"
    )]
    extra_loads: usize,
    /// Parameters as in the OpenFX demo host: no string parameters, integer and choice values
    /// unreadable (kOfxStatErrMissingHostFeature).
    #[arg(long, help_heading = "Host emulation")]
    minimal_params: bool,
    /// Render as a host's viewer does: Begin/EndSequenceRender carry kOfxPropIsInteractive = 1
    /// and Render kOfxImageEffectPropInteractiveRenderStatus = 1 (default: a final render, 0).
    #[arg(long, help_heading = "Host emulation")]
    interactive: bool,
    /// Ask for draft quality: Render carries kOfxImageEffectPropRenderQualityDraft = 1
    /// (default: 0, full quality).
    #[arg(long, help_heading = "Host emulation")]
    draft: bool,
    /// Raise the abort flag as frame K+1 starts; the run then fails.
    #[arg(long, value_name = "K", help_heading = "Host emulation")]
    abort_after: Option<usize>,
    /// Raise the abort flag (and answer "cancel") at the plugin's N-th progress update.
    #[arg(long, value_name = "N", help_heading = "Host emulation")]
    abort_after_updates: Option<usize>,
    /// Half/float images carry linear light (sRGB-decoded file values; outputs are encoded
    /// again), and clips say so with the OFX 1.5 colourspace ofx_scene_linear (Natron, Nuke).
    #[arg(long, help_heading = "Host emulation")]
    linear: bool,
    /// The Source clip is unconnected, or connected without images.
    #[arg(long, value_enum, value_name = "HOW", help_heading = "Malformed input")]
    missing_source: Option<CliMissing>,
    /// Source images are zero-size (empty bounds, no data).
    #[arg(long, help_heading = "Malformed input")]
    zero_size_source: bool,
    /// Force this pixel depth string on every image, unchecked.
    #[arg(long, value_name = "OFX_DEPTH", help_heading = "Malformed input")]
    raw_depth: Option<String>,
    /// Log host activity on stderr (-v: actions and suites fetched; -vv: also progress).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Host diagnostics on stderr, filtered by `log::max_level()`.
struct StderrLog;

static LOGGER: StderrLog = StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "ofx-render [{}] {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn parse_frames(s: &str) -> Result<(i32, i32), String> {
    let parse = |x: &str| {
        x.trim()
            .parse::<i32>()
            .map_err(|_| format!("bad frame number {x:?}"))
    };
    // Allow negative frames: split on the '-' that follows a digit.
    let bytes = s.as_bytes();
    let split = (1..bytes.len()).find(|&i| bytes[i] == b'-' && bytes[i - 1].is_ascii_digit());
    match split {
        Some(i) => Ok((parse(&s[..i])?, parse(&s[i + 1..])?)),
        None => {
            let f = parse(s)?;
            Ok((f, f))
        }
    }
}

/// `NAME=VALUE` arguments of `option` as pairs.
fn name_values(option: &str, args: &[String]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{option} {p:?}: expected NAME=VALUE")),
        })
        .collect()
}

/// The one-line summary of a successful render.
fn print_report(r: &ofx_host::RenderReport, opts: &RenderOptions) {
    let (lo, hi) = (r.frames.iter().min(), r.frames.iter().max());
    let range = match (lo, hi) {
        (Some(a), Some(b)) => format!(" ({a}-{b})"),
        _ => String::new(),
    };
    let dest = opts
        .output
        .as_deref()
        .map(|o| format!(" -> {o}"))
        .unwrap_or_else(|| " (not written)".into());
    let identity = if r.identity_frames > 0 {
        format!(", {} identity", r.identity_frames)
    } else {
        String::new()
    };
    println!(
        "rendered {} frame(s){range} with {} [{}, {}, {} thread(s), {} instance(s), {}{identity}] in {:.2} s{dest}",
        r.frames.len(),
        r.plugin,
        r.context.trim_start_matches("OfxImageEffectContext").to_lowercase(),
        r.depth.trim_start_matches("OfxBitDepth").to_lowercase(),
        opts.threads,
        r.instances,
        r.thread_safety.trim_start_matches("OfxImageEffectRender"),
        r.elapsed.as_secs_f64(),
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
    ofx_host::messages::set_echo(true);
    let usage = |m: String| {
        eprintln!("ofx-render: {m}");
        ExitCode::from(2)
    };
    let context = cli.context.map(|c| match c {
        CliContext::Filter => Context::Filter,
        CliContext::General => Context::General,
    });
    if cli.list_params {
        let ctx = context.unwrap_or(Context::Filter);
        return match ofx_host::list_params(&cli.bundle, cli.plugin.as_deref(), ctx) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ofx-render: error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let frames = match cli.frames.as_deref().map(parse_frames).transpose() {
        Ok(f) => f,
        Err(e) => return usage(format!("--frames: {e}")),
    };
    let params = match name_values("--param", &cli.params) {
        Ok(p) => p,
        Err(m) => return usage(m),
    };
    let user_edits = match name_values("--user-edit", &cli.user_edits) {
        Ok(p) => p,
        Err(m) => return usage(m),
    };
    let source_mode = match (cli.missing_source, cli.zero_size_source) {
        (Some(_), true) => {
            return usage("--missing-source and --zero-size-source exclude each other".into())
        }
        (Some(CliMissing::Unconnected), false) => SourceMode::Unconnected,
        (Some(CliMissing::NoImage), false) => SourceMode::NoImage,
        (None, true) => SourceMode::ZeroSize,
        (None, false) => SourceMode::Normal,
    };
    let opts = RenderOptions {
        bundle: cli.bundle.clone(),
        plugin: cli.plugin.clone(),
        context,
        input: cli.input.clone().unwrap_or_default(),
        output: cli.output.clone(),
        frames,
        params,
        user_edits,
        threads: cli.threads,
        order: match cli.order {
            CliOrder::Sequential => Order::Sequential,
            CliOrder::Reverse => Order::Reverse,
            CliOrder::Random => Order::Random,
        },
        seed: cli.seed,
        per_frame_sequence: cli.per_frame_sequence,
        clones: cli.clones,
        instance_per_frame: cli.instance_per_frame,
        rows: RowLayout {
            negative_row_bytes: cli.negative_rowbytes,
            padding: cli.row_padding,
        },
        depth: match cli.depth {
            CliDepth::Byte => Depth::Byte,
            CliDepth::Short => Depth::Short,
            CliDepth::Half => Depth::Half,
            CliDepth::Float => Depth::Float,
        },
        raw_depth: cli.raw_depth.clone(),
        temporal: !cli.no_temporal,
        abort_after: cli.abort_after,
        appearance: cli.appearance.clone(),
        face_matte: cli.face_matte.clone(),
        source_mode,
        extra_loads: cli.extra_loads,
        minimal_params: cli.minimal_params,
        abort_after_updates: cli.abort_after_updates,
        linear: cli.linear,
        host: match cli.host {
            CliHost::Generic => HostModel::Generic,
            CliHost::Mlt => HostModel::Mlt,
        },
        withhold: cli.withhold.clone(),
        interactive: cli.interactive,
        draft: cli.draft,
    };
    if let Some(bad) = opts
        .withhold
        .iter()
        .find(|w| w.rsplit(':').next().is_none_or(str::is_empty) || w.contains('\0'))
    {
        return usage(format!("--withhold {bad:?}: expected a property name"));
    }
    match ofx_host::render(&opts) {
        Ok(r) => {
            for (prop, n) in &r.withheld_reads {
                eprintln!("ofx-render: withheld {prop}: {n} read(s) refused");
            }
            print_report(&r, &opts);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ofx-render: error: {e}");
            match e {
                ofx_host::HostError::Usage(_) | ofx_host::HostError::Param(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
