//! One handler per OFX action; [`dispatch`] maps the action name to its handler.
//!
//! Handlers return `Ok(status)` (`kOfxStatOK`, or `kOfxStatReplyDefault` where the host's default
//! is right) or an [`EffectError`], which the entry point turns into a failed status plus a host
//! message. Nothing here may panic on host input; the entry point still catches panics.
use super::error::EffectError;
use super::params::{self, FACE_ENHANCE, FACE_MODEL_FOLDER, MODEL_FOLDER};
use super::state::{self, HostInfo};
use super::{
    body, logging, render, APPEARANCE_CLIP, FACE_APPEARANCE_CLIP, FACE_MATTE_CLIP, OUTPUT_CLIP,
    PLUGIN_DESCRIPTION, PLUGIN_GROUPING, PLUGIN_LABEL, SOURCE_CLIP, SUPPORTS_MULTI_RESOLUTION,
    SUPPORTS_TILES, VERSION_LABEL, VERSION_MAJOR, VERSION_MINOR,
};
use anchor_ofx::message::{self, MessageType};
use anchor_ofx::names::*;
use anchor_ofx::{BitDepth, Components, ImageEffect, PropertySet, Status};
use std::ffi::{c_void, CStr, CString};

/// The actions we trap; anything else gets `kOfxStatReplyDefault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `OfxActionLoad`.
    Load,
    /// `OfxActionUnload`.
    Unload,
    /// `OfxActionDescribe`.
    Describe,
    /// `OfxImageEffectActionDescribeInContext`.
    DescribeInContext,
    /// `OfxActionCreateInstance`.
    CreateInstance,
    /// `OfxActionDestroyInstance`.
    DestroyInstance,
    /// `OfxActionBeginInstanceChanged`.
    BeginInstanceChanged,
    /// `OfxActionInstanceChanged`.
    InstanceChanged,
    /// `OfxActionEndInstanceChanged`.
    EndInstanceChanged,
    /// `OfxImageEffectActionGetRegionOfDefinition`.
    GetRegionOfDefinition,
    /// `OfxImageEffectActionGetRegionsOfInterest`.
    GetRegionsOfInterest,
    /// `OfxImageEffectActionGetFramesNeeded`.
    GetFramesNeeded,
    /// `OfxImageEffectActionGetClipPreferences`.
    GetClipPreferences,
    /// `OfxImageEffectActionIsIdentity`.
    IsIdentity,
    /// `OfxImageEffectActionBeginSequenceRender`.
    BeginSequenceRender,
    /// `OfxImageEffectActionEndSequenceRender`.
    EndSequenceRender,
    /// `OfxImageEffectActionRender`.
    Render,
    /// `OfxActionPurgeCaches`.
    PurgeCaches,
}

const ACTIONS: &[(&CStr, Action)] = &[
    (kOfxActionLoad, Action::Load),
    (kOfxActionUnload, Action::Unload),
    (kOfxActionDescribe, Action::Describe),
    (
        kOfxImageEffectActionDescribeInContext,
        Action::DescribeInContext,
    ),
    (kOfxActionCreateInstance, Action::CreateInstance),
    (kOfxActionDestroyInstance, Action::DestroyInstance),
    (kOfxActionBeginInstanceChanged, Action::BeginInstanceChanged),
    (kOfxActionInstanceChanged, Action::InstanceChanged),
    (kOfxActionEndInstanceChanged, Action::EndInstanceChanged),
    (
        kOfxImageEffectActionGetRegionOfDefinition,
        Action::GetRegionOfDefinition,
    ),
    (
        kOfxImageEffectActionGetRegionsOfInterest,
        Action::GetRegionsOfInterest,
    ),
    (
        kOfxImageEffectActionGetFramesNeeded,
        Action::GetFramesNeeded,
    ),
    (
        kOfxImageEffectActionGetClipPreferences,
        Action::GetClipPreferences,
    ),
    (kOfxImageEffectActionIsIdentity, Action::IsIdentity),
    (
        kOfxImageEffectActionBeginSequenceRender,
        Action::BeginSequenceRender,
    ),
    (
        kOfxImageEffectActionEndSequenceRender,
        Action::EndSequenceRender,
    ),
    (kOfxImageEffectActionRender, Action::Render),
    (kOfxActionPurgeCaches, Action::PurgeCaches),
];

impl Action {
    /// The action for an OFX action name, if we trap it.
    pub fn from_name(name: &CStr) -> Option<Self> {
        ACTIONS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Whether the handle of this action is an effect instance (so messages can be posted on it).
    pub fn has_instance(self) -> bool {
        !matches!(
            self,
            Self::Load | Self::Unload | Self::Describe | Self::DescribeInContext
        )
    }
}

/// Per-instance data, kept small: everything heavy is process-global (see `state`).
#[derive(Debug)]
struct InstanceData {
    /// The context the instance was created in.
    general: bool,
    /// The sequence renders running on the instance (Begin/EndSequenceRender), by kind.
    sequences: parking_lot::Mutex<SequenceRenders>,
}

/// The sequence renders running on one instance: how many began as interactive (a host viewer,
/// `kOfxPropIsInteractive` = 1) and how many not (a final render), and not yet ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SequenceRenders {
    /// Interactive sequences running.
    interactive: usize,
    /// Non-interactive (final) sequences running.
    final_renders: usize,
}

impl SequenceRenders {
    /// A BeginSequenceRender; `interactive` as its `kOfxPropIsInteractive` (missing: false).
    fn begin(&mut self, interactive: bool) {
        if interactive {
            self.interactive += 1;
        } else {
            self.final_renders += 1;
        }
    }

    /// An EndSequenceRender; `interactive` as its `kOfxPropIsInteractive`, `None` when the host
    /// gave none. Saturating: an End without a Begin changes nothing.
    ///
    /// Without the flag the End is taken for an interactive one while any is running, and for a
    /// final one only when none is: the worst a wrong guess can then do is leave a final count
    /// behind (exact, slower frames until the instance goes), never end a final render that is
    /// still running, which would let the frames it still renders become previews.
    fn end(&mut self, interactive: Option<bool>) {
        let interactive = interactive.unwrap_or(self.interactive > 0);
        let count = if interactive {
            &mut self.interactive
        } else {
            &mut self.final_renders
        };
        *count = count.saturating_sub(1);
    }

    /// Whether a Render now previews for the running sequences: at least one interactive
    /// sequence and no final one.
    ///
    /// The safety rule: final renders stay exact. A final (non-interactive) sequence that
    /// overlaps a viewer's sequence on the same instance cannot tell its Render calls from the
    /// viewer's, so while any final sequence runs every Render is exact; a Render outside any
    /// sequence is final too. Only the host's draft quality or the `preview` parameter preview
    /// then.
    fn preview(self) -> bool {
        self.interactive > 0 && self.final_renders == 0
    }
}

/// The instance data of `effect`: `None` when it has none (a null pointer) or it cannot be read.
fn instance_data<'a>(effect: ImageEffect) -> Option<&'a InstanceData> {
    let data = effect.instance_data().ok()?.cast::<InstanceData>();
    // SAFETY: a non-null pointer was made by Box::into_raw in create_instance and is freed only
    // in DestroyInstance, which the host never runs alongside another action on the instance;
    // the data is shared read-only apart from the Mutex.
    unsafe { data.as_ref() }
}

/// Run one action.
pub fn dispatch(
    action: &CStr,
    effect: ImageEffect,
    in_args: PropertySet,
    out_args: PropertySet,
) -> Result<Status, EffectError> {
    let Some(known) = Action::from_name(action) else {
        log::debug!("action {} (not trapped)", action.to_string_lossy());
        return Ok(Status::ReplyDefault);
    };
    // The logger prints the thread: Natron calls GetFramesNeeded and Render on render threads.
    log::debug!("action {known:?} on {:?}", effect.raw());
    run(known, effect, in_args, out_args).map_err(|e| e.in_action(&format!("{known:?}")))
}

/// Run one trapped action.
fn run(
    known: Action,
    effect: ImageEffect,
    in_args: PropertySet,
    out_args: PropertySet,
) -> Result<Status, EffectError> {
    match known {
        Action::Load => load(),
        Action::Unload => unload(),
        Action::Describe => describe(effect),
        Action::DescribeInContext => describe_in_context(effect, in_args),
        Action::CreateInstance => create_instance(effect),
        Action::DestroyInstance => destroy_instance(effect),
        Action::BeginInstanceChanged | Action::EndInstanceChanged => Ok(Status::ReplyDefault),
        Action::InstanceChanged => instance_changed(effect, in_args),
        Action::GetRegionOfDefinition => region_of_definition(effect, in_args, out_args),
        Action::GetRegionsOfInterest => regions_of_interest(effect, in_args, out_args),
        Action::GetFramesNeeded => frames_needed(effect, in_args, out_args),
        Action::GetClipPreferences => clip_preferences(effect, out_args),
        // The effect is never an identity: with a model it generates new frames, and without
        // one it still converts depth and layout, which the host cannot do for us everywhere.
        Action::IsIdentity => Ok(Status::ReplyDefault),
        Action::BeginSequenceRender | Action::EndSequenceRender => {
            let first = sequence_render(known, effect, in_args);
            if known == Action::BeginSequenceRender {
                super::body::prepare(effect, first);
            }
            Ok(Status::Ok)
        }
        Action::Render => {
            let time = in_args.get_double(kOfxPropTime, 0)?;
            let window = in_args.get_rect_i(kOfxImageEffectPropRenderWindow)?;
            // OFX 1.4: set by hosts that want a fast render (viewers, scrubbing); optional.
            let draft = in_args
                .get_int(RENDER_QUALITY_DRAFT, 0)
                .is_ok_and(|v| v != 0);
            // Interactive sequences (a viewer) preview too, but only while no final sequence
            // runs on the instance: final renders stay exact (SequenceRenders::preview).
            let sequences = instance_data(effect)
                .map(|d| *d.sequences.lock())
                .unwrap_or_default();
            let preview = draft || sequences.preview();
            if preview {
                log::debug!(
                    "Render at {time}: preview (draft {draft}, sequences running: {} \
                     interactive, {} final)",
                    sequences.interactive,
                    sequences.final_renders
                );
            }
            render::render(effect, time, window, preview)
        }
        Action::PurgeCaches => {
            let kept = state::with(|g| g.caches.clear());
            log::debug!(
                "PurgeCaches: {} network call(s) in this process; the resource registry keeps \
                 {} loaded model(s) of {} bytes for running renders",
                crate::engine::service::global().network_calls(),
                kept.total.entries,
                kept.total.bytes
            );
            Ok(Status::Ok)
        }
    }
}

fn load() -> Result<Status, EffectError> {
    logging::init_from_env();
    let host = anchor_ofx::host()?;
    let props = host.properties();
    let info = HostInfo {
        name: host.name(),
        temporal_clip_access: props
            .get_int(kOfxImageEffectPropTemporalClipAccess, 0)
            .is_ok_and(|v| v != 0),
    };
    let loads = state::with(|g| g.load(info.clone()));
    log::info!(
        "Load #{loads} by host {:?} (temporal clip access: {}, message suite: {}, progress suite: {})",
        info.name,
        info.temporal_clip_access,
        host.message.is_some(),
        host.progress.is_some()
    );
    Ok(Status::Ok)
}

fn unload() -> Result<Status, EffectError> {
    let loads = state::with(|g| g.unload());
    log::info!("Unload: {loads} Load(s) outstanding");
    Ok(Status::Ok)
}

fn describe(effect: ImageEffect) -> Result<Status, EffectError> {
    let p = effect.properties()?;
    p.set_string(kOfxPropLabel, 0, PLUGIN_LABEL)?;
    p.set_string(kOfxPropShortLabel, 0, PLUGIN_LABEL)?;
    p.set_string(kOfxPropLongLabel, 0, PLUGIN_LABEL)?;
    p.set_string(kOfxImageEffectPluginPropGrouping, 0, PLUGIN_GROUPING)?;
    p.set_string(kOfxPropPluginDescription, 0, PLUGIN_DESCRIPTION)?;
    p.set_int_n(
        kOfxPropVersion,
        &[VERSION_MAJOR as i32, VERSION_MINOR as i32],
    )?;
    p.set_string(kOfxPropVersionLabel, 0, VERSION_LABEL)?;
    p.set_string_n(
        kOfxImageEffectPropSupportedContexts,
        &[
            cstr(kOfxImageEffectContextFilter),
            cstr(kOfxImageEffectContextGeneral),
        ],
    )?;
    let depths: Vec<&str> = BitDepth::ALL.iter().map(|d| cstr(d.ofx_name())).collect();
    p.set_string_n(kOfxImageEffectPropSupportedPixelDepths, &depths)?;
    // FullySafe: concurrent Render calls on one instance are fine, since instances hold no
    // mutable state and the (future) engine serialises the accelerator itself (ofx-hosts.md).
    p.set_string(
        kOfxImageEffectPluginRenderThreadSafety,
        0,
        cstr(kOfxImageEffectRenderFullySafe),
    )?;
    // We thread ourselves (the engine batches frames); the host must not split a frame.
    p.set_bool(kOfxImageEffectPluginPropHostFrameThreading, false)?;
    p.set_bool(kOfxImageEffectPluginPropSingleInstance, false)?;
    p.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;
    p.set_bool(
        kOfxImageEffectPropSupportsMultiResolution,
        SUPPORTS_MULTI_RESOLUTION,
    )?;
    // Windows of frames are denoised together: Render fetches Source at other times.
    p.set_bool(kOfxImageEffectPropTemporalClipAccess, true)?;
    // We convert every depth ourselves, so Source and Output may differ.
    p.set_bool(kOfxImageEffectPropSupportsMultipleClipDepths, true)?;
    p.set_bool(kOfxImageEffectPropSupportsMultipleClipPARs, false)?;
    Ok(Status::Ok)
}

fn cstr(name: &'static CStr) -> &'static str {
    name.to_str().unwrap_or_default()
}

fn describe_in_context(effect: ImageEffect, in_args: PropertySet) -> Result<Status, EffectError> {
    let context = in_args.get_string(kOfxImageEffectPropContext, 0)?;
    let general = context.as_bytes() == kOfxImageEffectContextGeneral.to_bytes();
    if !general && context.as_bytes() != kOfxImageEffectContextFilter.to_bytes() {
        return Err(EffectError::UnsupportedContext(context));
    }
    let rgba_rgb = [
        cstr(Components::Rgba.ofx_name()),
        cstr(Components::Rgb.ofx_name()),
    ];
    let all_components: Vec<&str> = Components::ALL.iter().map(|c| cstr(c.ofx_name())).collect();

    let output = effect.define_clip(OUTPUT_CLIP)?;
    output.set_string_n(kOfxImageEffectPropSupportedComponents, &rgba_rgb)?;
    output.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;

    // Source: the mesh-render track, fetched at other times for temporal windows.
    let source = effect.define_clip(SOURCE_CLIP)?;
    source.set_string_n(kOfxImageEffectPropSupportedComponents, &all_components)?;
    source.set_bool(kOfxImageEffectPropTemporalClipAccess, true)?;
    source.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;
    source.set_bool(kOfxImageClipPropOptional, false)?;

    if general {
        // Appearance: an optional reference still of the person.
        let appearance = effect.define_clip(APPEARANCE_CLIP)?;
        appearance.set_string_n(kOfxImageEffectPropSupportedComponents, &rgba_rgb)?;
        appearance.set_bool(kOfxImageEffectPropTemporalClipAccess, false)?;
        appearance.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;
        appearance.set_bool(kOfxImageClipPropOptional, true)?;
        // FaceMatte: a matte/ID pass of the head rendered with the mesh (issue 7). Fetched at
        // other times only for faceSmoothing.
        let matte = effect.define_clip(FACE_MATTE_CLIP)?;
        matte.set_string_n(kOfxImageEffectPropSupportedComponents, &all_components)?;
        matte.set_bool(kOfxImageEffectPropTemporalClipAccess, true)?;
        matte.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;
        matte.set_bool(kOfxImageClipPropOptional, true)?;
        matte.set_bool(kOfxImageClipPropIsMask, true)?;
        // FaceAppearance: the head reference still of the face pass.
        let face_photo = effect.define_clip(FACE_APPEARANCE_CLIP)?;
        face_photo.set_string_n(kOfxImageEffectPropSupportedComponents, &rgba_rgb)?;
        face_photo.set_bool(kOfxImageEffectPropTemporalClipAccess, false)?;
        face_photo.set_bool(kOfxImageEffectPropSupportsTiles, SUPPORTS_TILES)?;
        face_photo.set_bool(kOfxImageClipPropOptional, true)?;
    }
    params::define_all(effect.param_set()?)?;
    // The Output's premultiplication follows these (GetClipPreferences).
    if let Err(e) = effect.properties()?.set_string_n(
        kOfxImageEffectPropClipPreferencesSlaveParam,
        &[params::FRAMING, params::OUTPUT_ALPHA],
    ) {
        log::debug!("the host takes no clip-preferences slave parameters: {e}");
    }
    log::debug!("described context {context}");
    Ok(Status::Ok)
}

fn create_instance(effect: ImageEffect) -> Result<Status, EffectError> {
    let context = effect.context()?;
    let general = context.as_bytes() == kOfxImageEffectContextGeneral.to_bytes();
    let data = Box::into_raw(Box::new(InstanceData {
        general,
        sequences: parking_lot::Mutex::new(SequenceRenders::default()),
    }));
    if let Err(e) = effect.set_instance_data(data.cast::<c_void>()) {
        // SAFETY: `data` came from Box::into_raw above and was not stored anywhere.
        drop(unsafe { Box::from_raw(data) });
        return Err(e.into());
    }
    // A model folder from MAKE_YOUR_ANCHOR_MODEL recommends its settings as a chosen one does;
    // values a project saved away from the table defaults stay.
    load_model_defaults(effect, params::DefaultsPart::Body, true);
    update_ui(effect);
    log::debug!(
        "created instance {:?} (general context: {general})",
        effect.raw()
    );
    Ok(Status::Ok)
}

fn destroy_instance(effect: ImageEffect) -> Result<Status, EffectError> {
    let data = effect.instance_data()?.cast::<InstanceData>();
    if !data.is_null() {
        effect.set_instance_data(std::ptr::null_mut())?;
        // SAFETY: the pointer was made by Box::into_raw in create_instance and is freed once,
        // as it is cleared from the instance first.
        let data = unsafe { Box::from_raw(data) };
        log::debug!(
            "destroyed instance {:?} (general context: {}, sequence renders still running: {:?})",
            effect.raw(),
            data.general,
            data.sequences.lock()
        );
    }
    Ok(Status::Ok)
}

fn instance_changed(effect: ImageEffect, in_args: PropertySet) -> Result<Status, EffectError> {
    let name = in_args.get_string(kOfxPropName, 0).unwrap_or_default();
    let kind = in_args.get_string(kOfxPropType, 0).unwrap_or_default();
    let reason = in_args
        .get_string(kOfxPropChangeReason, 0)
        .unwrap_or_default();
    log::debug!("instance changed: {kind} {name} ({reason})");
    // A model folder the user picks brings its recommended settings (anchor.json); a project
    // load or the plugin's own edits do not, so saved values stay.
    let user = kOfxChangeUserEdited.to_str().is_ok_and(|u| reason == u);
    if user && name == MODEL_FOLDER {
        load_model_defaults(effect, params::DefaultsPart::Body, false);
    }
    if user && name == FACE_MODEL_FOLDER {
        load_model_defaults(effect, params::DefaultsPart::Face, false);
    }
    if name == FACE_ENHANCE || name == MODEL_FOLDER {
        update_ui(effect);
    }
    Ok(Status::Ok)
}

/// Sets the sampling (or face) parameters to the values the chosen model folder's `anchor.json`
/// recommends. Best effort: a folder without `anchor.json` changes nothing, and a value the host
/// refuses is logged and skipped. With `from_env`, only when the folder comes from
/// `MAKE_YOUR_ANCHOR_MODEL` (the parameter is empty), and only parameters still at their table
/// default.
fn load_model_defaults(effect: ImageEffect, part: params::DefaultsPart, from_env: bool) {
    let result = (|| -> Result<(), EffectError> {
        let set = effect.param_set()?;
        let folder = match part {
            params::DefaultsPart::Body => {
                let typed = set.param(MODEL_FOLDER)?.string()?;
                if from_env && !typed.trim().is_empty() {
                    return Ok(());
                }
                let env = std::env::var(params::ENV_MODEL_FOLDER).ok();
                match params::resolve_model_folder(&typed, env.as_deref()) {
                    Ok(Some(folder)) => folder,
                    _ => return Ok(()),
                }
            }
            params::DefaultsPart::Face => {
                std::path::PathBuf::from(set.param(FACE_MODEL_FOLDER)?.string()?.trim())
            }
        };
        for (name, value) in params::model_default_values(&folder, part) {
            if from_env && !at_table_default(set, name) {
                continue;
            }
            let r = set.param(name).and_then(|p| match value {
                params::ParamValue::Int(v) => p.set_int(v),
                params::ParamValue::Double(v) => p.set_double(v),
            });
            match r {
                Ok(()) => log::info!(
                    "{name} = {value:?} from the anchor.json of {}",
                    folder.display()
                ),
                Err(e) => log::warn!("could not set {name} from {}: {e}", folder.display()),
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::debug!("could not load the model's default settings: {e}");
    }
}

/// Whether parameter `name` holds its table default (false when it cannot be read).
fn at_table_default(set: anchor_ofx::ParamSet, name: &str) -> bool {
    let Some(spec) = params::spec(name) else {
        return false;
    };
    let Ok(p) = set.param(name) else {
        return false;
    };
    let value = match spec.kind {
        params::Kind::Double { .. } => p.double().map(params::ParamValue::Double),
        _ => p.int().map(params::ParamValue::Int),
    };
    value.is_ok_and(|v| v == params::table_default(spec))
}

/// Grey out the Face page's parameters unless `faceEnhance` is on, and flag a model folder that does not
/// exist with a persistent message (cleared once it is fixed). Best effort: UI niceties never
/// fail an action.
fn update_ui(effect: ImageEffect) {
    let result = (|| -> Result<(), EffectError> {
        let params = effect.param_set()?;
        let face = params.param(FACE_ENHANCE)?.int()? != 0;
        params.param(FACE_MODEL_FOLDER)?.set_enabled(face)?;
        for p in params::PARAMS
            .iter()
            .filter(|p| p.page == params::PAGE_FACE && p.name != FACE_ENHANCE)
            .filter(|p| p.name != FACE_MODEL_FOLDER)
        {
            // Best effort per parameter: a host without one (string parameters in the demo
            // host) must not keep the others enabled.
            if let Err(e) = params.param(p.name).and_then(|q| q.set_enabled(face)) {
                log::debug!("could not grey out {}: {e}", p.name);
            }
        }
        let folder = params.param(MODEL_FOLDER)?.string()?;
        let env = std::env::var(params::ENV_MODEL_FOLDER).ok();
        match params::resolve_model_folder(&folder, env.as_deref()) {
            Ok(_) => {
                let _ = message::clear_persistent_message(effect);
            }
            Err(e) => {
                log::warn!("{e}");
                let _ = message::set_persistent_message(
                    effect,
                    MessageType::Warning,
                    e.message_id(),
                    &e.to_string(),
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::debug!("could not update the parameter UI: {e}");
    }
}

fn region_of_definition(
    effect: ImageEffect,
    in_args: PropertySet,
    out_args: PropertySet,
) -> Result<Status, EffectError> {
    let time = in_args.get_double(kOfxPropTime, 0)?;
    let source = effect.clip(SOURCE_CLIP)?;
    if !source.is_connected()? {
        return Ok(Status::ReplyDefault);
    }
    // The rendered frame covers exactly the mesh render's frame.
    let rod = source.region_of_definition(time)?;
    out_args.set_rect_d(kOfxImageEffectPropRegionOfDefinition, rod)?;
    Ok(Status::Ok)
}

fn clip_prop(prefix: &str, clip: &str) -> Result<CString, EffectError> {
    Ok(anchor_ofx::property::c_string(&format!("{prefix}{clip}"))?)
}

fn regions_of_interest(
    effect: ImageEffect,
    in_args: PropertySet,
    out_args: PropertySet,
) -> Result<Status, EffectError> {
    let time = in_args.get_double(kOfxPropTime, 0)?;
    // Diffusion looks at the whole frame, whatever region is rendered: ask for the full RoD.
    let mut any = false;
    let general = effect.context()?.as_bytes() == kOfxImageEffectContextGeneral.to_bytes();
    let clips: &[&str] = if general {
        &[
            SOURCE_CLIP,
            APPEARANCE_CLIP,
            FACE_MATTE_CLIP,
            FACE_APPEARANCE_CLIP,
        ]
    } else {
        &[SOURCE_CLIP]
    };
    for &name in clips {
        let clip = effect.clip(name)?;
        if clip.is_connected()? {
            let rod = clip.region_of_definition(time)?;
            out_args.set_rect_d(&clip_prop("OfxImageClipPropRoI_", name)?, rod)?;
            any = true;
        }
    }
    Ok(if any {
        Status::Ok
    } else {
        Status::ReplyDefault
    })
}

fn frames_needed(
    effect: ImageEffect,
    in_args: PropertySet,
    out_args: PropertySet,
) -> Result<Status, EffectError> {
    let time = in_args.get_double(kOfxPropTime, 0)?;
    // Exactly the engine's dependency cone of `time` (one range); the frame itself without a
    // model or temporal access. Never fail here: Resolve rejects failed statuses, and Render
    // reports any problem with the settings anyway.
    let range = (|| -> Result<Option<(f64, f64)>, EffectError> {
        let settings = params::Settings::read(effect.param_set()?, time)?;
        let env = std::env::var(params::ENV_MODEL_FOLDER).ok();
        let Some(folder) = params::resolve_model_folder(&settings.model_folder, env.as_deref())?
        else {
            return Ok(None);
        };
        let source = effect.clip(SOURCE_CLIP)?;
        if !source.is_connected()? {
            return Ok(None);
        }
        let clip = body::ClipFrames::of(effect, &source, time);
        let temporal = state::with(|g| g.host.temporal_clip_access);
        if temporal && settings.face_enhance && settings.face_temporal {
            // The temporal face reads every frame's placement, and the mesh and body frames
            // (whose own cones reach further) of the face windows around this frame.
            return Ok(Some((clip.first, clip.last)));
        }
        Ok(body::frames_needed(
            &settings, &folder, temporal, &clip, time,
        ))
    })()
    .unwrap_or_else(|e| {
        log::debug!("GetFramesNeeded at {time}: {e}; answering the frame itself");
        None
    });
    let (a, b) = range.unwrap_or((time, time));
    log::debug!("GetFramesNeeded at {time}: Source {a}-{b}");
    out_args.set_double_n(
        &clip_prop("OfxImageClipPropFrameRange_", SOURCE_CLIP)?,
        &[a, b],
    )?;
    // FaceMatte: this frame, with faceSmoothing also the previous frames whose placements the
    // smoothing reads, and with faceTemporal the whole clip (face.rs).
    let matte = (|| -> Result<Option<(f64, f64)>, EffectError> {
        if effect.context()?.as_bytes() != kOfxImageEffectContextGeneral.to_bytes() {
            return Ok(None);
        }
        if !effect.clip(FACE_MATTE_CLIP)?.is_connected()? {
            return Ok(None);
        }
        let settings = params::Settings::read(effect.param_set()?, time)?;
        let temporal = state::with(|g| g.host.temporal_clip_access);
        let weight = super::face::smoothing_weight(settings.face_smoothing);
        let clip = body::ClipFrames::of(effect, &effect.clip(SOURCE_CLIP)?, time);
        if settings.face_enhance && temporal && settings.face_temporal {
            return Ok(Some((clip.first, clip.last)));
        }
        let first = match (settings.face_enhance && temporal, weight) {
            (true, Some(alpha)) => {
                let back =
                    crate::engine::face_service::smoothing_history(alpha).min(1 << 20) as f64;
                (time - back).max(clip.first).min(time)
            }
            _ => time,
        };
        Ok(Some((first, time)))
    })()
    .unwrap_or_else(|e| {
        log::debug!("GetFramesNeeded at {time} (FaceMatte): {e}");
        None
    });
    if let Some((first, last)) = matte {
        log::debug!("GetFramesNeeded at {time}: FaceMatte {first}-{last}");
        out_args.set_double_n(
            &clip_prop("OfxImageClipPropFrameRange_", FACE_MATTE_CLIP)?,
            &[first, last],
        )?;
    }
    Ok(Status::Ok)
}

fn clip_preferences(effect: ImageEffect, out_args: PropertySet) -> Result<Status, EffectError> {
    // The anchor is a full-colour RGBA picture, whatever the Source layout.
    out_args.set_string(
        &clip_prop("OfxImageClipPropComponents_", OUTPUT_CLIP)?,
        0,
        cstr(kOfxImageComponentRGBA),
    )?;
    // Opaque, or premultiplied by the matte / the region's coverage (issue 16).
    let premultiplication = body::output_premultiplication(effect.param_set()?);
    log::debug!(
        "GetClipPreferences: Output premultiplication {}",
        premultiplication.to_string_lossy()
    );
    out_args.set_string(
        kOfxImageEffectPropPreMultiplication,
        0,
        cstr(premultiplication),
    )?;
    Ok(Status::Ok)
}

/// `kOfxImageEffectPropRenderQualityDraft` (OFX 1.4; not in the openfx crate's constants).
const RENDER_QUALITY_DRAFT: &std::ffi::CStr = c"OfxImageEffectPropRenderQualityDraft";

/// Counts a Begin/EndSequenceRender on the instance's running sequences by its
/// `kOfxPropIsInteractive` (never fails: a missing flag is "not interactive" on Begin, and
/// unknown on End, see [`SequenceRenders::end`]), logs it, and returns the first frame of its
/// range (0 when the host gives none).
fn sequence_render(action: Action, effect: ImageEffect, in_args: PropertySet) -> f64 {
    let range = in_args
        .get_double_n(kOfxImageEffectPropFrameRange)
        .unwrap_or_default();
    let interactive = in_args
        .get_int(kOfxPropIsInteractive, 0)
        .ok()
        .map(|v| v != 0);
    let running = instance_data(effect).map(|d| {
        let mut sequences = d.sequences.lock();
        if action == Action::BeginSequenceRender {
            sequences.begin(interactive.unwrap_or(false));
        } else {
            sequences.end(interactive);
        }
        *sequences
    });
    log::debug!(
        "{action:?}: frames {range:?}, interactive {interactive:?}; running on the instance: {running:?}"
    );
    range.first().copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_map() {
        assert_eq!(Action::from_name(c"OfxActionLoad"), Some(Action::Load));
        assert_eq!(
            Action::from_name(c"OfxImageEffectActionGetFramesNeeded"),
            Some(Action::GetFramesNeeded)
        );
        assert_eq!(Action::from_name(c"OfxActionSyncPrivateData"), None);
        assert_eq!(ACTIONS.len(), 18);
        assert!(!Action::Describe.has_instance());
        assert!(Action::Render.has_instance());
    }

    #[test]
    fn interactive_sequences_preview_unless_a_final_one_runs() {
        let mut s = SequenceRenders::default();
        assert!(!s.preview(), "a Render outside any sequence is final");
        s.begin(true);
        assert!(s.preview(), "a viewer's sequence previews");
        s.begin(false);
        assert!(
            !s.preview(),
            "a final sequence overlapping it renders exact frames"
        );
        s.end(Some(true));
        assert!(!s.preview(), "the final sequence still runs");
        s.end(Some(false));
        assert_eq!(s, SequenceRenders::default());
        assert!(!s.preview());
        // Saturating: an End without a Begin changes nothing.
        s.end(Some(true));
        s.end(Some(false));
        s.end(None);
        assert_eq!(s, SequenceRenders::default());
    }

    #[test]
    fn an_end_without_the_flag_never_ends_a_running_final_sequence_first() {
        let mut s = SequenceRenders::default();
        s.begin(true);
        s.begin(false);
        s.end(None);
        assert_eq!(
            s,
            SequenceRenders {
                interactive: 0,
                final_renders: 1
            },
            "the interactive count goes first, so the final one stays exact"
        );
        assert!(!s.preview());
        s.end(None);
        assert_eq!(s, SequenceRenders::default());
    }
}
