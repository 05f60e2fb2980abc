//! The render driver: runs a plugin through Load → Describe → DescribeInContext →
//! CreateInstance → GetClipPreferences → BeginSequenceRender → (GetRegionOfDefinition,
//! GetFramesNeeded, GetRegionsOfInterest, IsIdentity, Render)×frames → EndSequenceRender →
//! PurgeCaches → DestroyInstance → Unload, with the host behaviours of hosts.md selectable, and
//! checks every answer: statuses, RoD, RoI, frames needed, clip preferences, image leaks.

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbaImage;
use openfx::sys::generic::core::*;
use openfx::sys::image_effect_v1::gpu_render::{
    kOfxImageEffectPropCudaEnabled, kOfxImageEffectPropOpenGLEnabled,
};
use openfx::sys::image_effect_v1::image_effect::*;
use openfx::sys::image_effect_v1::param::kOfxTypeParameter;
use parking_lot::Mutex;

use crate::bundle::{Bundle, Plugin};
use crate::effect::{
    drop_images_of, enter_render, leave_render, live_images_of, rect_to_pixels, Effect, Session,
    SourceMode,
};
use crate::error::HostError;
use crate::messages::{self, Message};
use crate::pixels::{Components, Depth, PixelBuffer, RowLayout};
use crate::props::{cstring, PropValue, PropertySet};
use crate::sequence::{load_rgba8, output_path, FrameStore, Sequence};
use crate::status::{is_success, status_allowed, status_name};
use crate::suites::{make_host, HostCaps};

/// The context to instantiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `OfxImageEffectContextFilter`: Source → Output.
    Filter,
    /// `OfxImageEffectContextGeneral`: Source (+ Appearance) → Output.
    General,
}

impl Context {
    fn ofx(&self) -> &'static CStr {
        match self {
            Context::Filter => kOfxImageEffectContextFilter,
            Context::General => kOfxImageEffectContextGeneral,
        }
    }
}

/// Order in which frames are handed to render threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// First to last.
    #[default]
    Sequential,
    /// Last to first.
    Reverse,
    /// Shuffled with `seed`.
    Random,
}

/// A real host whose way of calling plugins a run emulates as a whole (`--host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostModel {
    /// Only the behaviours the other options select; clips and the instance carry their frame
    /// range, as in Natron and Resolve.
    #[default]
    Generic,
    /// MLT 7.40's openfx module (melt, Kdenlive, Shotcut), as observed in `ofx-hosts.md`: the
    /// Filter context only; no temporal clip access (`clipGetImage` returns the frame being
    /// rendered whatever time is asked, and GetFramesNeeded is never sent); byte RGBA images
    /// stored bottom-up (negative rowBytes); no `kOfxImageEffectPropFrameRange` on clips or on
    /// the instance (it appears only in the Begin/EndSequenceRender arguments, as [t, t]); a new
    /// instance for every frame, with Begin/EndSequenceRender around it; and the plugin loaded
    /// three times.
    Mlt,
}

/// Everything a run needs. `Default` gives a plain sequential byte render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// `.ofx.bundle` directory or `.ofx` binary.
    pub bundle: PathBuf,
    /// Plugin identifier (`None`: the only image effect in the bundle).
    pub plugin: Option<String>,
    /// Context (`None`: General with an appearance image, else Filter).
    pub context: Option<Context>,
    /// Input sequence: directory of PNGs or printf pattern.
    pub input: String,
    /// Output directory or printf pattern (`None`: render and discard).
    pub output: Option<String>,
    /// Inclusive frame range (`None`: the whole input).
    pub frames: Option<(i32, i32)>,
    /// `--param name=value` pairs, applied in order.
    pub params: Vec<(String, String)>,
    /// `--user-edit name=value` pairs: set after the instance is created, each followed by
    /// Begin/InstanceChanged/EndInstanceChanged with reason `OfxChangeUserEdited`, as a user's
    /// edit in a host's UI.
    pub user_edits: Vec<(String, String)>,
    /// Concurrent render threads.
    pub threads: usize,
    /// Frame order.
    pub order: Order,
    /// Seed for `Order::Random`.
    pub seed: u64,
    /// Begin/EndSequenceRender around each frame (Natron, MLT).
    pub per_frame_sequence: bool,
    /// Number of instances sharing the frames (Natron's render clones).
    pub clones: usize,
    /// A new instance for every frame (MLT).
    pub instance_per_frame: bool,
    /// Row layout of every image.
    pub rows: RowLayout,
    /// Pixel depth of all clips.
    pub depth: Depth,
    /// Force this depth string on every image, unchecked (to test a plugin's error path).
    pub raw_depth: Option<String>,
    /// Grant temporal clip access (false: MLT behaviour).
    pub temporal: bool,
    /// Abort after this many completed frames.
    pub abort_after: Option<usize>,
    /// Appearance image (General context).
    pub appearance: Option<PathBuf>,
    /// FaceMatte sequence (General context): a directory of PNGs or a printf pattern, frame
    /// numbers as the input's; a missing frame has no image.
    pub face_matte: Option<String>,
    /// Source clip behaviour.
    pub source_mode: SourceMode,
    /// Extra Load actions before Describe (MLT loads a plugin several times); each is matched
    /// by an Unload at the end, so a refcounting plugin ends at zero.
    pub extra_loads: usize,
    /// Emulate the OpenFX demo host's parameters: no string parameters, integer and choice
    /// values unreadable.
    pub minimal_params: bool,
    /// Raise the abort flag during the plugin's N-th progress update (a user pressing cancel
    /// mid-frame); the update itself already answers "cancel".
    pub abort_after_updates: Option<usize>,
    /// Half/float images carry linear light (sRGB-decoded file values, encoded again on
    /// output) and every clip says so with the OFX 1.5 colourspace `ofx_scene_linear`.
    pub linear: bool,
    /// The host emulated as a whole; its behaviours add to the options above.
    pub host: HostModel,
    /// Properties the property suite answers `kOfxStatErrUnknown` for (`NAME` or
    /// `SCOPE:NAME`, see [`crate::props::set_withheld`]).
    pub withhold: Vec<String>,
    /// Render as a host's viewer does: Begin/EndSequenceRender carry `kOfxPropIsInteractive` =
    /// 1 and Render `kOfxImageEffectPropInteractiveRenderStatus` = 1.
    pub interactive: bool,
    /// Ask for draft quality: Render carries `kOfxImageEffectPropRenderQualityDraft` = 1.
    pub draft: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            bundle: PathBuf::new(),
            plugin: None,
            context: None,
            input: String::new(),
            output: None,
            frames: None,
            params: Vec::new(),
            user_edits: Vec::new(),
            threads: 1,
            order: Order::Sequential,
            seed: 0,
            per_frame_sequence: false,
            clones: 1,
            instance_per_frame: false,
            rows: RowLayout::default(),
            depth: Depth::Byte,
            raw_depth: None,
            temporal: true,
            abort_after: None,
            appearance: None,
            face_matte: None,
            source_mode: SourceMode::Normal,
            extra_loads: 0,
            minimal_params: false,
            abort_after_updates: None,
            linear: false,
            host: HostModel::Generic,
            withhold: Vec::new(),
            interactive: false,
            draft: false,
        }
    }
}

impl RenderOptions {
    /// These options with the behaviours of `self.host` applied, or a usage error naming an
    /// option that host cannot honour.
    fn with_host_model(&self) -> Result<RenderOptions, HostError> {
        let mut o = self.clone();
        match self.host {
            HostModel::Generic => {}
            HostModel::Mlt => {
                let general = self.context == Some(Context::General)
                    || self.appearance.is_some()
                    || self.face_matte.is_some();
                if general {
                    return Err(HostError::Usage(
                        "--host mlt offers the Filter context only (MLT's openfx module): drop \
                         --context general, --appearance and --face-matte"
                            .into(),
                    ));
                }
                if self.depth != Depth::Byte {
                    return Err(HostError::Usage(format!(
                        "--host mlt hands over byte images only, not {}: drop --depth",
                        self.depth.ofx_name()
                    )));
                }
                if self.clones > 1 {
                    return Err(HostError::Usage(
                        "--host mlt creates an instance per frame; it has no render clones: \
                         drop --clones"
                            .into(),
                    ));
                }
                o.context = Some(Context::Filter);
                o.temporal = false;
                o.instance_per_frame = true;
                o.per_frame_sequence = true;
                o.rows.negative_row_bytes = true;
                o.extra_loads = o.extra_loads.max(2);
            }
        }
        Ok(o)
    }
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct RenderReport {
    /// Plugin identifier and version.
    pub plugin: String,
    /// Context used.
    pub context: String,
    /// Pixel depth of the output clip.
    pub depth: String,
    /// The plugin's render thread safety.
    pub thread_safety: String,
    /// Frames written (or rendered, without output), in completion order.
    pub frames: Vec<i32>,
    /// Frames the plugin declared identity (host copied the input).
    pub identity_frames: usize,
    /// Instances created.
    pub instances: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Messages the plugin posted.
    pub messages: Vec<Message>,
    /// Each `withhold` entry with the number of plugin reads the host refused.
    pub withheld_reads: Vec<(String, usize)>,
}

/// Shuffle deterministically (SplitMix64 + Fisher-Yates; no dependency needed).
fn shuffle(v: &mut [i32], seed: u64) {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn detail(frame: Option<f64>) -> String {
    let mut d = String::new();
    if let Some(t) = frame {
        d.push_str(&format!(" at frame {t}"));
    }
    if let Some(m) = messages::last_error_text() {
        d.push_str(&format!(" (plugin says: {m})"));
    }
    d
}

/// Check an action's status: out-of-spec statuses are violations, failures are errors.
fn check(action: &CStr, st: OfxStatus, frame: Option<f64>) -> Result<OfxStatus, HostError> {
    let name = action.to_string_lossy();
    if !status_allowed(&name, st) {
        return Err(HostError::Violation(format!(
            "{name} returned {}, which the OFX API does not allow for this action{}",
            status_name(st),
            detail(frame)
        )));
    }
    if !is_success(st) {
        return Err(HostError::ActionFailed {
            action: name.into_owned(),
            status: status_name(st),
            detail: detail(frame),
        });
    }
    Ok(st)
}

fn rect_ok(r: &OfxRectD) -> bool {
    [r.x1, r.y1, r.x2, r.y2].iter().all(|v| v.is_finite()) && r.x1 <= r.x2 && r.y1 <= r.y2
}

fn rect_from(v: &[f64]) -> Option<OfxRectD> {
    (v.len() == 4).then(|| OfxRectD {
        x1: v[0],
        y1: v[1],
        x2: v[2],
        y2: v[3],
    })
}

/// Render's inArgs at `t`: interactive (a viewer's render) and draft quality as `opts` says.
fn render_args(t: f64, opts: &RenderOptions) -> PropertySet {
    let a = PropertySet::new("render args");
    a.dbl(kOfxPropTime, &[t]);
    a.cstr(kOfxImageEffectPropFieldToRender, &[kOfxImageFieldNone]);
    a.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
    a.int(kOfxImageEffectPropSequentialRenderStatus, &[0]);
    a.int(
        kOfxImageEffectPropInteractiveRenderStatus,
        &[i32::from(opts.interactive)],
    );
    a.int(
        kOfxImageEffectPropRenderQualityDraft,
        &[i32::from(opts.draft)],
    );
    a.int(kOfxImageEffectPropCudaEnabled, &[0]);
    a.int(kOfxImageEffectPropOpenGLEnabled, &[0]);
    a
}

/// Begin/EndSequenceRender's inArgs over `[a, b]`; `interactive`: a viewer's sequence.
fn sequence_args(a: f64, b: f64, interactive: bool) -> PropertySet {
    let interactive = i32::from(interactive);
    let s = PropertySet::new("sequence args");
    s.dbl(kOfxImageEffectPropFrameRange, &[a, b]);
    s.dbl(kOfxImageEffectPropFrameStep, &[1.0]);
    s.int(kOfxPropIsInteractive, &[interactive]);
    s.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
    s.int(kOfxImageEffectPropSequentialRenderStatus, &[0]);
    s.int(kOfxImageEffectPropInteractiveRenderStatus, &[interactive]);
    s.int(kOfxImageEffectPropCudaEnabled, &[0]);
    s.int(kOfxImageEffectPropOpenGLEnabled, &[0]);
    s
}

/// The outcome of one frame.
enum FrameImage {
    Rendered(RgbaImage),
    Identity(RgbaImage),
}

/// One run: the loaded plugin, its context descriptor and the session.
struct Run<'a> {
    plugin: &'a Plugin,
    desc: &'a Effect,
    context: Context,
    session: Arc<Session>,
    opts: &'a RenderOptions,
    depth: Depth,
}

impl Run<'_> {
    fn create_instance(&self) -> Result<Box<Effect>, HostError> {
        let inst = Effect::instance_of(self.desc, self.context.ofx(), self.session.clone());
        for (name, value) in &self.opts.params {
            let p = inst.params.get(name).ok_or_else(|| {
                HostError::Param(format!(
                    "the plugin has no parameter {name:?}; it has: {}",
                    inst.params.names().join(", ")
                ))
            })?;
            p.set_from_text(value).map_err(HostError::Param)?;
        }
        let depth = cstring(&self.depth.ofx_name());
        for name in inst.clip_names() {
            if let Some(c) = inst.clip(&name) {
                c.props.cstr(kOfxImageEffectPropPixelDepth, &[&depth]);
                c.props.cstr(kOfxImageClipPropUnmappedPixelDepth, &[&depth]);
            }
        }
        let st = self
            .plugin
            .call(kOfxActionCreateInstance, Some(&inst), None, None);
        check(kOfxActionCreateInstance, st, None)?;
        let edits = self.clip_preferences(&inst).and_then(|()| {
            self.opts
                .user_edits
                .iter()
                .try_for_each(|(name, value)| self.user_edit(&inst, name, value))
        });
        if let Err(e) = edits {
            // The instance exists for the plugin: destroy it before reporting.
            let _ = self.destroy_instance(inst);
            return Err(e);
        }
        Ok(inst)
    }

    /// A user's edit of parameter `name`: the new value, then the instance-changed actions.
    fn user_edit(&self, inst: &Effect, name: &str, value: &str) -> Result<(), HostError> {
        let p = inst.params.get(name).ok_or_else(|| {
            HostError::Param(format!("--user-edit: the plugin has no parameter {name:?}"))
        })?;
        p.set_from_text(value).map_err(HostError::Param)?;
        let reason = PropertySet::new("instance changed reason");
        reason.cstr(kOfxPropChangeReason, &[kOfxChangeUserEdited]);
        let args = PropertySet::new("instance changed args");
        args.cstr(kOfxPropType, &[kOfxTypeParameter]);
        args.str(kOfxPropName, &[name]);
        args.cstr(kOfxPropChangeReason, &[kOfxChangeUserEdited]);
        args.dbl(kOfxPropTime, &[0.0]);
        args.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
        for (action, props) in [
            (kOfxActionBeginInstanceChanged, &reason),
            (kOfxActionInstanceChanged, &args),
            (kOfxActionEndInstanceChanged, &reason),
        ] {
            let st = self.plugin.call(action, Some(inst), Some(props), None);
            check(action, st, None)?;
        }
        Ok(())
    }

    fn clip_preferences(&self, inst: &Effect) -> Result<(), HostError> {
        let out = PropertySet::new("clip preferences");
        let depth = self.depth.ofx_name();
        for name in inst.clip_names() {
            out.str(
                &cstring(&format!("OfxImageClipPropComponents_{name}")),
                &["OfxImageComponentRGBA"],
            );
            out.str(
                &cstring(&format!("OfxImageClipPropDepth_{name}")),
                &[&depth],
            );
            out.dbl(&cstring(&format!("OfxImageClipPropPAR_{name}")), &[1.0]);
        }
        out.dbl(kOfxImageEffectPropFrameRate, &[25.0]);
        out.cstr(kOfxImageClipPropFieldOrder, &[kOfxImageFieldNone]);
        out.cstr(
            kOfxImageEffectPropPreMultiplication,
            &[kOfxImageUnPreMultiplied],
        );
        out.int(kOfxImageClipPropContinuousSamples, &[0]);
        out.int(kOfxImageEffectFrameVarying, &[0]);
        let st = self.plugin.call(
            kOfxImageEffectActionGetClipPreferences,
            Some(inst),
            None,
            Some(&out),
        );
        if check(kOfxImageEffectActionGetClipPreferences, st, None)? == kOfxStatReplyDefault {
            return Ok(());
        }
        let host_depths = [
            "OfxBitDepthByte",
            "OfxBitDepthShort",
            "OfxBitDepthHalf",
            "OfxBitDepthFloat",
        ];
        let mut depths = Vec::new();
        for name in inst.clip_names() {
            let Some(c) = inst.clip(&name) else { continue };
            let comps = out
                .get_string(&cstring(&format!("OfxImageClipPropComponents_{name}")))
                .unwrap_or_default();
            if Components::from_ofx(&comps).is_none() {
                return Err(HostError::Violation(format!(
                    "GetClipPreferences asked for components {comps:?} on clip {name}"
                )));
            }
            c.props.str(kOfxImageEffectPropComponents, &[&comps]);
            let d = out
                .get_string(&cstring(&format!("OfxImageClipPropDepth_{name}")))
                .unwrap_or_default();
            if self.opts.raw_depth.is_none() {
                if !host_depths.contains(&d.as_str()) {
                    return Err(HostError::Violation(format!(
                        "GetClipPreferences asked for depth {d:?} on clip {name}"
                    )));
                }
                c.props.str(kOfxImageEffectPropPixelDepth, &[&d]);
                depths.push(d);
            }
        }
        depths.dedup();
        if depths.len() > 1 {
            return Err(HostError::Violation(format!(
                "GetClipPreferences asked for different depths {depths:?}, but the host does not \
                 support multiple clip depths"
            )));
        }
        if let (Some(o), Some(p)) = (
            inst.clip("Output"),
            out.get_string(kOfxImageEffectPropPreMultiplication),
        ) {
            o.props.str(kOfxImageEffectPropPreMultiplication, &[&p]);
        }
        Ok(())
    }

    fn destroy_instance(&self, inst: Box<Effect>) -> Result<(), HostError> {
        let st = self
            .plugin
            .call(kOfxActionDestroyInstance, Some(&inst), None, None);
        let leaked = live_images_of(&inst);
        drop_images_of(&inst);
        drop(inst);
        check(kOfxActionDestroyInstance, st, None)?;
        if leaked > 0 {
            return Err(HostError::Violation(format!(
                "{leaked} clip image(s) were never released (clipReleaseImage)"
            )));
        }
        Ok(())
    }

    fn sequence(&self, inst: &Effect, begin: bool, a: f64, b: f64) -> Result<(), HostError> {
        let action = if begin {
            kOfxImageEffectActionBeginSequenceRender
        } else {
            kOfxImageEffectActionEndSequenceRender
        };
        let args = sequence_args(a, b, self.opts.interactive);
        let st = self.plugin.call(action, Some(inst), Some(&args), None);
        check(action, st, None).map(|_| ())
    }

    /// The default RoD: the Source RoD if connected, else the project (OFX defaults).
    fn default_rod(&self, inst: &Effect, t: f64) -> OfxRectD {
        match inst.clip("Source") {
            Some(c) if c.connected() => c.rod(t),
            _ => OfxRectD {
                x1: 0.0,
                y1: 0.0,
                x2: self.session.project.0 as f64,
                y2: self.session.project.1 as f64,
            },
        }
    }

    fn region_of_definition(&self, inst: &Effect, t: f64) -> Result<OfxRectD, HostError> {
        let def = self.default_rod(inst, t);
        let inargs = PropertySet::new("rod in");
        inargs.dbl(kOfxPropTime, &[t]);
        inargs.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
        let out = PropertySet::new("rod out");
        out.dbl(
            kOfxImageEffectPropRegionOfDefinition,
            &[def.x1, def.y1, def.x2, def.y2],
        );
        let a = kOfxImageEffectActionGetRegionOfDefinition;
        let st = self.plugin.call(a, Some(inst), Some(&inargs), Some(&out));
        let rod = if check(a, st, Some(t))? == kOfxStatOK {
            rect_from(&out.get_doubles(kOfxImageEffectPropRegionOfDefinition)).ok_or_else(|| {
                HostError::Violation(format!("GetRegionOfDefinition at {t} left no 4-value RoD"))
            })?
        } else {
            def
        };
        if !rect_ok(&rod) {
            return Err(HostError::Violation(format!(
                "GetRegionOfDefinition at frame {t} returned an invalid rectangle \
                 ({}, {}, {}, {})",
                rod.x1, rod.y1, rod.x2, rod.y2
            )));
        }
        Ok(rod)
    }

    /// GetFramesNeeded: the Source ranges, checked to be well-formed and to contain `t`.
    fn frames_needed(&self, inst: &Effect, t: f64) -> Result<Vec<(f64, f64)>, HostError> {
        if inst.clip("Source").is_none() {
            return Ok(Vec::new());
        }
        let inargs = PropertySet::new("frames needed in");
        inargs.dbl(kOfxPropTime, &[t]);
        let out = PropertySet::new("frames needed out");
        let key = c"OfxImageClipPropFrameRange_Source";
        out.dbl(key, &[t, t]);
        let a = kOfxImageEffectActionGetFramesNeeded;
        let st = self.plugin.call(a, Some(inst), Some(&inargs), Some(&out));
        if check(a, st, Some(t))? == kOfxStatReplyDefault {
            return Ok(vec![(t, t)]);
        }
        let v = out.get_doubles(key);
        if v.is_empty() || !v.len().is_multiple_of(2) {
            return Err(HostError::Violation(format!(
                "GetFramesNeeded at frame {t} gave {} values for Source; ranges come in \
                 (min, max) pairs",
                v.len()
            )));
        }
        let ranges: Vec<(f64, f64)> = v.chunks(2).map(|p| (p[0], p[1])).collect();
        for (a, b) in &ranges {
            if !a.is_finite() || !b.is_finite() || a > b {
                return Err(HostError::Violation(format!(
                    "GetFramesNeeded at frame {t} returned the range ({a}, {b})"
                )));
            }
        }
        if !ranges.iter().any(|(a, b)| *a <= t && t <= *b) {
            return Err(HostError::Violation(format!(
                "GetFramesNeeded at frame {t} returned {ranges:?}, which does not contain the \
                 frame itself"
            )));
        }
        Ok(ranges)
    }

    fn regions_of_interest(&self, inst: &Effect, t: f64, rod: &OfxRectD) -> Result<(), HostError> {
        let inargs = PropertySet::new("roi in");
        inargs.dbl(kOfxPropTime, &[t]);
        inargs.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
        inargs.dbl(
            kOfxImageEffectPropRegionOfInterest,
            &[rod.x1, rod.y1, rod.x2, rod.y2],
        );
        let out = PropertySet::new("roi out");
        let names: Vec<String> = inst
            .clip_names()
            .into_iter()
            .filter(|n| n != "Output")
            .collect();
        for n in &names {
            out.dbl(
                &cstring(&format!("OfxImageClipPropRoI_{n}")),
                &[rod.x1, rod.y1, rod.x2, rod.y2],
            );
        }
        let a = kOfxImageEffectActionGetRegionsOfInterest;
        let st = self.plugin.call(a, Some(inst), Some(&inargs), Some(&out));
        if check(a, st, Some(t))? == kOfxStatReplyDefault {
            return Ok(());
        }
        for n in &names {
            let v = out.get_doubles(&cstring(&format!("OfxImageClipPropRoI_{n}")));
            match rect_from(&v) {
                Some(r) if rect_ok(&r) => {}
                _ => {
                    return Err(HostError::Violation(format!(
                        "GetRegionsOfInterest at frame {t} returned {v:?} for clip {n}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// IsIdentity: `Some((clip, time))` if the plugin says the output is that clip's frame.
    fn is_identity(
        &self,
        inst: &Effect,
        t: f64,
        window: &OfxRectI,
    ) -> Result<Option<(String, f64)>, HostError> {
        let inargs = PropertySet::new("identity in");
        inargs.dbl(kOfxPropTime, &[t]);
        inargs.cstr(kOfxImageEffectPropFieldToRender, &[kOfxImageFieldNone]);
        inargs.int(
            kOfxImageEffectPropRenderWindow,
            &[window.x1, window.y1, window.x2, window.y2],
        );
        inargs.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
        let out = PropertySet::new("identity out");
        out.str(kOfxPropName, &[""]);
        out.dbl(kOfxPropTime, &[t]);
        let a = kOfxImageEffectActionIsIdentity;
        let st = self.plugin.call(a, Some(inst), Some(&inargs), Some(&out));
        if check(a, st, Some(t))? != kOfxStatOK {
            return Ok(None);
        }
        let clip = out.get_string(kOfxPropName).unwrap_or_default();
        let time = out.get_doubles(kOfxPropTime).first().copied().unwrap_or(t);
        if inst.clip(&clip).is_none() || clip == "Output" {
            return Err(HostError::Violation(format!(
                "IsIdentity at frame {t} named clip {clip:?}, which is not an input clip"
            )));
        }
        Ok(Some((clip, time)))
    }

    fn render_frame(&self, inst: &Effect, t: f64) -> Result<FrameImage, HostError> {
        let per_frame = self.opts.per_frame_sequence || self.opts.instance_per_frame;
        if per_frame {
            self.sequence(inst, true, t, t)?;
        }
        let result = self.render_frame_body(inst, t);
        if per_frame {
            let end = self.sequence(inst, false, t, t);
            if result.is_ok() {
                end?;
            }
        }
        result
    }

    fn render_frame_body(&self, inst: &Effect, t: f64) -> Result<FrameImage, HostError> {
        let rod = self.region_of_definition(inst, t)?;
        inst.set_rod(t, rod);
        // MLT never asks for frames needed (hosts.md); with temporal access we ask every frame
        // like Natron, and hold the plugin to its answer.
        let needed = if self.session.temporal {
            Some(self.frames_needed(inst, t)?)
        } else {
            None
        };
        self.regions_of_interest(inst, t, &rod)?;
        let window = rect_to_pixels(&rod);
        if let Some((clip, time)) = self.is_identity(inst, t, &window)? {
            let img = if clip == "Appearance" {
                self.session.appearance.as_deref().cloned()
            } else {
                inst.source_frame(time).as_deref().cloned()
            };
            return img.map(FrameImage::Identity).ok_or_else(|| {
                HostError::Violation(format!(
                    "IsIdentity at frame {t} named {clip} at {time}, which has no image"
                ))
            });
        }
        let out_clip = inst
            .clip("Output")
            .ok_or_else(|| HostError::Violation("no Output clip".into()))?;
        let buf = Arc::new(PixelBuffer::new(
            window,
            out_clip.depth(),
            out_clip.components(),
            self.session.rows,
        )?);
        inst.register_output(t, buf.clone());
        enter_render(inst, t);
        let args = render_args(t, self.opts);
        args.int(
            kOfxImageEffectPropRenderWindow,
            &[window.x1, window.y1, window.x2, window.y2],
        );
        let a = kOfxImageEffectActionRender;
        let st = self.plugin.call(a, Some(inst), Some(&args), None);
        let fetched = leave_render();
        inst.unregister_output(t);
        check(a, st, Some(t))?;
        if let Some(ranges) = needed {
            for f in fetched {
                if !ranges.iter().any(|(a, b)| *a <= f && f <= *b) {
                    return Err(HostError::Violation(format!(
                        "Render at frame {t} fetched Source at {f}, outside the frames it \
                         declared in GetFramesNeeded {ranges:?}"
                    )));
                }
            }
        }
        Ok(FrameImage::Rendered(buf.to_rgba8_as(self.session.linear)))
    }
}

/// Render a frame range from an image sequence through a plugin, as configured.
pub fn render(opts: &RenderOptions) -> Result<RenderReport, HostError> {
    let start = Instant::now();
    let opts = &opts.with_host_model()?;
    if opts.threads == 0 || opts.clones == 0 {
        return Err(HostError::Usage(
            "--threads and --clones must be at least 1".into(),
        ));
    }
    if opts.clones > 1 && opts.instance_per_frame {
        return Err(HostError::Usage(
            "--clones and --instance-per-frame are different host models; pick one".into(),
        ));
    }
    let seq = Sequence::open(&opts.input)?;
    let (first, last) = seq.range();
    let (a, b) = opts.frames.unwrap_or((first, last));
    if a > b || a < first || b > last {
        return Err(HostError::Sequence(format!(
            "frames {a}-{b} requested, but {} holds frames {first}-{last}",
            opts.input
        )));
    }
    let mut frames: Vec<i32> = Vec::new();
    for f in a..=b {
        if !seq.frames.contains_key(&f) {
            return Err(HostError::Sequence(format!(
                "frame {f} is missing from {}",
                opts.input
            )));
        }
        frames.push(f);
    }
    let inputs: Vec<(i32, PathBuf)> = seq.frames.iter().map(|(k, v)| (*k, v.clone())).collect();
    let store = Arc::new(FrameStore::new(seq));
    let first_img = store
        .get(a)
        .ok_or_else(|| HostError::Sequence(format!("cannot decode frame {a} of {}", opts.input)))?;
    let appearance = match &opts.appearance {
        Some(p) => Some(Arc::new(load_rgba8(p)?)),
        None => None,
    };
    let context = opts.context.unwrap_or(if appearance.is_some() {
        Context::General
    } else {
        Context::Filter
    });
    let face_matte = match &opts.face_matte {
        Some(spec) => Some(Arc::new(FrameStore::new(Sequence::open(spec)?))),
        None => None,
    };
    if face_matte.is_some() && context != Context::General {
        return Err(HostError::Usage(
            "--face-matte needs the general context".into(),
        ));
    }
    if appearance.is_some() && context != Context::General {
        return Err(HostError::Usage(
            "--appearance needs the general context".into(),
        ));
    }
    if let Some(out) = &opts.output {
        let dir = if out.contains('%') {
            PathBuf::from(out)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default()
        } else {
            PathBuf::from(out)
        };
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                HostError::Sequence(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
    }

    let host = make_host(HostCaps {
        temporal: opts.temporal,
    });
    let bundle = Bundle::open(&opts.bundle, host)?;
    let plugin = bundle.plugin(opts.plugin.as_deref())?;
    // kOfxPluginPropFilePath is the bundle directory: <bundle>/Contents/<arch>/<binary>.
    let file_path = bundle
        .binary
        .ancestors()
        .nth(3)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let input = Prepared {
        context,
        store,
        appearance,
        face_matte,
        project: (first_img.width(), first_img.height()),
        range: (first, last),
        frames,
        inputs,
    };
    crate::props::set_withheld(&opts.withhold);
    let result = render_with_plugin(opts, &plugin, &file_path, input);
    let withheld = crate::props::withheld_reads();
    crate::props::set_withheld(&[]);
    let mut report = result?;
    report.elapsed = start.elapsed();
    report.withheld_reads = withheld;
    Ok(report)
}

/// The inputs of a run, read and checked before the plugin is loaded.
struct Prepared {
    context: Context,
    store: Arc<FrameStore>,
    appearance: Option<Arc<RgbaImage>>,
    face_matte: Option<Arc<FrameStore>>,
    project: (u32, u32),
    range: (i32, i32),
    frames: Vec<i32>,
    inputs: Vec<(i32, PathBuf)>,
}

/// Load → describe → render → Unload with a plugin already found, then check that no suite
/// call broke a rule along the way.
fn render_with_plugin(
    opts: &RenderOptions,
    plugin: &Plugin,
    file_path: &str,
    input: Prepared,
) -> Result<RenderReport, HostError> {
    let violations_before = messages::violation_count();
    let mut loads = 0;
    let mut result = Ok(());
    for _ in 0..=opts.extra_loads {
        let st = plugin.call(kOfxActionLoad, None, None, None);
        result = check(kOfxActionLoad, st, None).map(|_| ());
        if result.is_err() {
            break;
        }
        loads += 1;
    }
    let result = result.and_then(|_| describe_and_render(opts, plugin, file_path, input));
    let mut unload = Ok(kOfxStatOK);
    for _ in 0..loads {
        let st = plugin.call(kOfxActionUnload, None, None, None);
        unload = unload.and(check(kOfxActionUnload, st, None));
    }
    let mut report = result?;
    unload?;
    let violations = messages::violations();
    if violations.len() > violations_before {
        return Err(HostError::Violation(
            violations[violations_before..].join("; "),
        ));
    }
    report.messages = messages::messages();
    Ok(report)
}

/// The depth of the Output clip the plugin asked for (the offered depth without instances).
fn output_depth(run: &Run<'_>, instances: &[Box<Effect>]) -> String {
    instances
        .first()
        .and_then(|i| i.clip("Output"))
        .map(|c| c.depth().ofx_name())
        .unwrap_or_else(|| run.depth.ofx_name())
}

/// What the render threads have done so far.
struct Tally {
    /// Frames rendered and kept.
    completed: AtomicUsize,
    /// Set on the first error (or an abort): no further frame starts.
    stop: AtomicBool,
    /// The first error.
    errors: Mutex<Option<HostError>>,
    /// What happened to frames in flight when the abort came.
    aborted_frames: Mutex<Vec<String>>,
    /// The frames rendered, in completion order.
    done: Mutex<Vec<i32>>,
    /// Frames the plugin answered as an identity of the Source.
    identity: AtomicUsize,
}

impl Tally {
    fn new(first_error: Option<HostError>) -> Self {
        Self {
            completed: AtomicUsize::new(0),
            stop: AtomicBool::new(first_error.is_some()),
            errors: Mutex::new(first_error),
            aborted_frames: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
            identity: AtomicUsize::new(0),
        }
    }

    fn fail(&self, e: HostError) {
        self.errors.lock().get_or_insert(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Records the result of `frame`: saved under `output` and counted, or noted as aborted,
    /// or the first error.
    fn record(
        &self,
        frame: i32,
        result: Result<FrameImage, HostError>,
        was_aborted: bool,
        output: Option<&str>,
        inputs: &[(i32, PathBuf)],
    ) {
        match result {
            Ok(img) if !was_aborted => {
                let img = match img {
                    FrameImage::Rendered(i) => i,
                    FrameImage::Identity(i) => {
                        self.identity.fetch_add(1, Ordering::SeqCst);
                        i
                    }
                };
                if let Some(out) = output {
                    if let Err(e) = save_frame(out, inputs, frame, &img) {
                        self.fail(e);
                    }
                }
                self.done.lock().push(frame);
                self.completed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => self.aborted_frames.lock().push(format!(
                "frame {frame}: the plugin returned kOfxStatOK after the abort; output discarded"
            )),
            Err(e) if was_aborted => self
                .aborted_frames
                .lock()
                .push(format!("frame {frame}: {e}")),
            Err(e) => self.fail(e),
        }
    }
}

/// How renders are serialised, from the plugin's render thread safety: FullySafe renders run
/// concurrently on one instance, InstanceSafe ones one at a time per instance, Unsafe ones one
/// at a time in the process.
struct RenderLocks {
    fully_safe: bool,
    instance_safe: bool,
    global: Mutex<()>,
    per_instance: Vec<Mutex<()>>,
}

impl RenderLocks {
    fn new(safety: &str, instances: usize) -> Self {
        Self {
            fully_safe: safety.as_bytes() == kOfxImageEffectRenderFullySafe.to_bytes(),
            instance_safe: safety.as_bytes() == kOfxImageEffectRenderInstanceSafe.to_bytes(),
            global: Mutex::new(()),
            per_instance: (0..instances).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Renders the `k`-th requested frame (time `t`) under the plugin's locking: on a new
    /// instance (`--instance-per-frame`, counted in `created`) or on instance `k mod n`.
    /// `None` when there is no instance to render on.
    fn render(
        &self,
        run: &Run<'_>,
        instances: &[Box<Effect>],
        created: &AtomicUsize,
        k: usize,
        t: f64,
    ) -> Option<Result<FrameImage, HostError>> {
        if run.opts.instance_per_frame {
            let _g = (!self.fully_safe && !self.instance_safe).then(|| self.global.lock());
            return Some(run.create_instance().and_then(|inst| {
                created.fetch_add(1, Ordering::SeqCst);
                let r = run.render_frame(&inst, t);
                let d = run.destroy_instance(inst);
                r.and_then(|img| d.map(|_| img))
            }));
        }
        let i = k % instances.len().max(1);
        let inst = instances.get(i)?;
        let _g = if self.fully_safe {
            None
        } else if self.instance_safe {
            self.per_instance.get(i).map(|l| l.lock())
        } else {
            Some(self.global.lock())
        };
        Some(run.render_frame(inst, t))
    }
}

/// The clips a context descriptor must define: Output and Source, and Appearance when an
/// appearance image is given.
fn check_clips(cdesc: &Effect, ctx_name: &str, appearance: bool) -> Result<(), HostError> {
    let clips = cdesc.clip_names();
    if !clips.iter().any(|c| c == "Output") {
        return Err(HostError::Violation(format!(
            "DescribeInContext({ctx_name}) defined no Output clip (clips: {clips:?})"
        )));
    }
    if !clips.iter().any(|c| c == "Source") {
        return Err(HostError::Violation(format!(
            "DescribeInContext({ctx_name}) defined no Source clip (clips: {clips:?})"
        )));
    }
    if appearance && !clips.iter().any(|c| c == "Appearance") {
        return Err(HostError::Usage(format!(
            "--appearance given, but the plugin has no Appearance clip (clips: {clips:?})"
        )));
    }
    Ok(())
}

/// The pixel depth the host offers: `--raw-depth` as given, else `--depth` when the plugin
/// supports it (a host would not offer an unsupported one).
fn offered_depth(
    opts: &RenderOptions,
    plugin: &Plugin,
    cdesc: &Effect,
) -> Result<Depth, HostError> {
    if let Some(raw) = &opts.raw_depth {
        return Ok(Depth::Other(raw.clone()));
    }
    let supported = cdesc
        .props
        .get_strings(kOfxImageEffectPropSupportedPixelDepths);
    let want = opts.depth.ofx_name();
    if !supported.is_empty() && !supported.contains(&want) {
        return Err(HostError::Usage(format!(
            "{} does not support {want} images (it supports {supported:?}); a host would not \
             offer them (use --raw-depth to force it)",
            plugin.info.id
        )));
    }
    Ok(opts.depth.clone())
}

/// The instances that live for the whole range (none with `--instance-per-frame`), and the
/// indices of those that began a sequence over `[fa, fb]` (none with per-frame sequences); the
/// first error stops both.
// Instances stay boxed: the plugin holds their handles (addresses) until DestroyInstance.
#[allow(clippy::vec_box)]
fn start_instances(
    run: &Run<'_>,
    (fa, fb): (f64, f64),
) -> (Vec<Box<Effect>>, Vec<usize>, Option<HostError>) {
    let mut instances: Vec<Box<Effect>> = Vec::new();
    let mut begun = Vec::new();
    if !run.opts.instance_per_frame {
        for _ in 0..run.opts.clones {
            match run.create_instance() {
                Ok(i) => instances.push(i),
                Err(e) => return (instances, begun, Some(e)),
            }
        }
    }
    if !run.opts.per_frame_sequence {
        for (i, inst) in instances.iter().enumerate() {
            match run.sequence(inst, true, fa, fb) {
                Ok(()) => begun.push(i),
                Err(e) => return (instances, begun, Some(e)),
            }
        }
    }
    (instances, begun, None)
}

/// Describe, then DescribeInContext in `context` (which the plugin must support): the plugin's
/// descriptor and its context descriptor.
fn describe(
    plugin: &Plugin,
    file_path: &str,
    context: Context,
) -> Result<(Box<Effect>, Box<Effect>), HostError> {
    let desc = Effect::descriptor(file_path);
    let st = plugin.call(kOfxActionDescribe, Some(&desc), None, None);
    check(kOfxActionDescribe, st, None)?;
    let contexts = desc.props.get_strings(kOfxImageEffectPropSupportedContexts);
    let ctx_name = context.ofx().to_string_lossy().into_owned();
    if !contexts.contains(&ctx_name) {
        return Err(HostError::Usage(format!(
            "{} does not support the {ctx_name} context; it supports {contexts:?}",
            plugin.info.id
        )));
    }
    let cdesc = Effect::context_descriptor(&desc, context.ofx());
    let inargs = PropertySet::new("describe in context");
    inargs.cstr(kOfxImageEffectPropContext, &[context.ofx()]);
    let a = kOfxImageEffectActionDescribeInContext;
    let st = plugin.call(a, Some(&cdesc), Some(&inargs), None);
    check(a, st, None)?;
    Ok((desc, cdesc))
}

/// EndSequenceRender on the instances that began one, PurgeCaches, then DestroyInstance on
/// every instance, whatever failed: the first error, if any.
// Instances stay boxed: the plugin holds their handles (addresses) until DestroyInstance.
#[allow(clippy::vec_box)]
fn shut_down(
    run: &Run<'_>,
    instances: Vec<Box<Effect>>,
    begun: &[usize],
    (fa, fb): (f64, f64),
) -> Option<HostError> {
    let mut cleanup_error: Option<HostError> = None;
    for &i in begun {
        if let Some(inst) = instances.get(i) {
            if let Err(e) = run.sequence(inst, false, fa, fb) {
                cleanup_error.get_or_insert(e);
            }
        }
    }
    if let Some(inst) = instances.first() {
        let st = run
            .plugin
            .call(kOfxActionPurgeCaches, Some(inst), None, None);
        if let Err(e) = check(kOfxActionPurgeCaches, st, None) {
            cleanup_error.get_or_insert(e);
        }
    }
    for inst in instances {
        if let Err(e) = run.destroy_instance(inst) {
            cleanup_error.get_or_insert(e);
        }
    }
    cleanup_error
}

/// Writes a rendered frame under `out`, named after its input file.
fn save_frame(
    out: &str,
    inputs: &[(i32, PathBuf)],
    frame: i32,
    img: &image::RgbaImage,
) -> Result<(), HostError> {
    let input = inputs
        .iter()
        .find(|(n, _)| *n == frame)
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    let path = output_path(out, frame, &input);
    img.save(&path)
        .map_err(|e| HostError::Sequence(format!("cannot write {}: {e}", path.display())))
}

fn describe_and_render(
    opts: &RenderOptions,
    plugin: &Plugin,
    file_path: &str,
    input: Prepared,
) -> Result<RenderReport, HostError> {
    let Prepared {
        context,
        store,
        appearance,
        face_matte,
        project,
        range,
        frames,
        inputs,
    } = input;
    let (frames, inputs) = (&frames[..], &inputs[..]);
    let ctx_name = context.ofx().to_string_lossy().into_owned();
    let (_desc, cdesc) = describe(plugin, file_path, context)?;
    check_clips(&cdesc, &ctx_name, appearance.is_some())?;
    let depth = offered_depth(opts, plugin, &cdesc)?;
    let safety = cdesc
        .props
        .get_string(kOfxImageEffectPluginRenderThreadSafety)
        .unwrap_or_default();
    let session = Arc::new(Session {
        source: store,
        source_mode: opts.source_mode,
        appearance,
        face_matte,
        rows: opts.rows,
        temporal: opts.temporal,
        abort: AtomicBool::new(false),
        project,
        range,
        minimal_params: opts.minimal_params,
        abort_after_updates: opts.abort_after_updates,
        progress_updates: AtomicUsize::new(0),
        linear: opts.linear,
        frame_range: opts.host != HostModel::Mlt,
    });
    let run = Run {
        plugin,
        desc: &cdesc,
        context,
        session: session.clone(),
        opts,
        depth,
    };

    let (fa, fb) = (
        frames.first().copied().unwrap_or(0) as f64,
        frames.last().copied().unwrap_or(0) as f64,
    );
    let (instances, begun, mut first_error) = start_instances(&run, (fa, fb));
    let instances_created = AtomicUsize::new(instances.len());

    let mut order: Vec<i32> = frames.to_vec();
    match opts.order {
        Order::Sequential => {}
        Order::Reverse => order.reverse(),
        Order::Random => shuffle(&mut order, opts.seed),
    }
    let output_depth = output_depth(&run, &instances);

    let locks = RenderLocks::new(&safety, instances.len());
    let next = AtomicUsize::new(0);
    let tally = Tally::new(first_error.take());
    let Tally {
        completed, stop, ..
    } = &tally;

    let worker = || {
        while !stop.load(Ordering::SeqCst) {
            let k = next.fetch_add(1, Ordering::SeqCst);
            let Some(&frame) = order.get(k) else { break };
            // --abort-after K: the abort flag goes up as frame K+1 starts, so the plugin sees
            // it during that render (a user pressing cancel); no further frames are started.
            let mut aborting = false;
            if let Some(limit) = opts.abort_after {
                if completed.load(Ordering::SeqCst) >= limit {
                    session.abort.store(true, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                    aborting = true;
                }
            }
            if session.abort.load(Ordering::SeqCst) && !aborting {
                break;
            }
            let t = frame as f64;
            let Some(result) = locks.render(&run, &instances, &instances_created, k, t) else {
                break;
            };
            let was_aborted = session.abort.load(Ordering::SeqCst);
            tally.record(frame, result, was_aborted, opts.output.as_deref(), inputs);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..opts.threads {
            s.spawn(worker);
        }
    });

    // Shut down cleanly whatever happened: End, PurgeCaches, Destroy.
    let cleanup_error = shut_down(&run, instances, &begun, (fa, fb));

    let Tally {
        completed,
        errors,
        aborted_frames,
        done,
        identity,
        ..
    } = tally;
    if let Some(e) = errors.into_inner() {
        return Err(e);
    }
    if session.abort.load(Ordering::SeqCst) {
        let detail = aborted_frames.into_inner();
        return Err(HostError::Aborted {
            completed: completed.load(Ordering::SeqCst),
            detail: if detail.is_empty() {
                "no frame was in flight".to_string()
            } else {
                detail.join("; ")
            },
        });
    }
    if let Some(e) = cleanup_error {
        return Err(e);
    }
    Ok(RenderReport {
        plugin: format!(
            "{} {}.{}",
            plugin.info.id, plugin.info.version.0, plugin.info.version.1
        ),
        context: ctx_name,
        depth: output_depth,
        thread_safety: safety,
        frames: done.into_inner(),
        identity_frames: identity.load(Ordering::SeqCst),
        instances: instances_created.load(Ordering::SeqCst),
        elapsed: Duration::ZERO,
        messages: Vec::new(),
        withheld_reads: Vec::new(),
    })
}

/// Describe a plugin's parameters (`--list-params`): name, type, default, choice options.
pub fn list_params(
    bundle_path: &std::path::Path,
    id: Option<&str>,
    context: Context,
) -> Result<Vec<String>, HostError> {
    let host = make_host(HostCaps { temporal: true });
    let bundle = Bundle::open(bundle_path, host)?;
    let plugin = bundle.plugin(id)?;
    check(
        kOfxActionLoad,
        plugin.call(kOfxActionLoad, None, None, None),
        None,
    )?;
    let desc = Effect::descriptor("");
    let result = (|| {
        check(
            kOfxActionDescribe,
            plugin.call(kOfxActionDescribe, Some(&desc), None, None),
            None,
        )?;
        let cdesc = Effect::context_descriptor(&desc, context.ofx());
        let inargs = PropertySet::new("describe in context");
        inargs.cstr(kOfxImageEffectPropContext, &[context.ofx()]);
        let a = kOfxImageEffectActionDescribeInContext;
        check(a, plugin.call(a, Some(&cdesc), Some(&inargs), None), None)?;
        let mut lines = Vec::new();
        for name in cdesc.params.names() {
            let Some(p) = cdesc.params.get(&name) else {
                continue;
            };
            if p.shape == crate::params::Shape::None {
                continue;
            }
            let default = match p
                .props
                .get(openfx::sys::image_effect_v1::param::kOfxParamPropDefault)
            {
                Some(PropValue::Int(v)) => format!("{v:?}"),
                Some(PropValue::Double(v)) => format!("{v:?}"),
                Some(PropValue::Str(v)) => format!(
                    "{:?}",
                    v.first()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
                _ => String::new(),
            };
            let kind = p.kind.trim_start_matches("OfxParamType").to_string();
            let options = p.options();
            let mut line = format!("{name:<18} {kind:<10} default {default}");
            if !options.is_empty() {
                line.push_str(&format!("  options: {}", options.join(" | ")));
            }
            lines.push(line);
        }
        Ok(lines)
    })();
    let _ = plugin.call(kOfxActionUnload, None, None, None);
    result
}

#[cfg(test)]
mod fake_plugin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<i32> = (0..24).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..24).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..24).collect::<Vec<_>>());
    }

    #[test]
    fn status_checks() {
        assert!(check(kOfxImageEffectActionRender, kOfxStatOK, None).is_ok());
        assert!(matches!(
            check(kOfxImageEffectActionRender, kOfxStatReplyDefault, Some(1.0)),
            Err(HostError::Violation(_))
        ));
        assert!(matches!(
            check(kOfxImageEffectActionGetFramesNeeded, 42, None),
            Err(HostError::Violation(_))
        ));
        assert!(matches!(
            check(kOfxImageEffectActionRender, kOfxStatFailed, Some(3.0)),
            Err(HostError::ActionFailed { .. })
        ));
    }
}
