//! Effects (descriptors and instances), clips and images, plus the OFX image-effect suite.
//!
//! An [`Effect`]'s address is the `OfxImageEffectHandle`; a [`Clip`]'s is the
//! `OfxImageClipHandle`; an image handle is the address of the image's property set. Images are
//! tracked in a process-wide table so a double release or a leak is reported as a violation.
//!
//! What the Source clip returns is decided by the run's [`Session`]: the frame asked for
//! (temporal access), or the frame being rendered whatever time is asked (`--no-temporal`,
//! like MLT, hosts.md), or nothing (unconnected, no image), or a zero-size image.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use image::RgbaImage;
use openfx::sys::generic::core::*;
use openfx::sys::image_effect_v1::image_effect::*;
use parking_lot::{Mutex, RwLock};

use crate::messages;
use crate::params::ParamSet;
use crate::pixels::{Components, Depth, PixelBuffer, RowLayout};
use crate::props::{cstring, PropValue, PropertySet};
use crate::sequence::FrameStore;
use crate::status::check_magic;

const EFFECT_MAGIC: u64 = 0x4F46_5845_4646_4543;
const CLIP_MAGIC: u64 = 0x4F46_5843_4C49_5053;
const MEMORY_MAGIC: u64 = 0x4F46_584D_454D_4F52;

/// How the Source clip behaves (malformed-input emulation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceMode {
    /// Frames from the input sequence.
    #[default]
    Normal,
    /// Source is not connected: `kOfxImageClipPropConnected` = 0 and no images.
    Unconnected,
    /// Source says connected but `clipGetImage` fails (a host that has no image).
    NoImage,
    /// Source images have empty bounds and no data, although the clip RoD is the frame size.
    ZeroSize,
}

/// What a run's clips serve, shared by every instance of the run.
pub struct Session {
    /// Source frames.
    pub source: Arc<FrameStore>,
    /// Source behaviour.
    pub source_mode: SourceMode,
    /// The Appearance image (General context), the same at every time.
    pub appearance: Option<Arc<RgbaImage>>,
    /// The FaceMatte frames (General context), by frame number like the Source.
    pub face_matte: Option<Arc<FrameStore>>,
    /// Row layout of every image the host allocates.
    pub rows: RowLayout,
    /// Whether the host grants temporal clip access.
    pub temporal: bool,
    /// The abort flag (`abort()` and progress cancel).
    pub abort: AtomicBool,
    /// Project size in pixels (the first frame's size).
    pub project: (u32, u32),
    /// First and last frame of the input.
    pub range: (i32, i32),
    /// Emulate the OpenFX demo host's minimal parameter support (`ParamSet::instance_of`).
    pub minimal_params: bool,
    /// Raise `abort` on this progress update (1-based), if set.
    pub abort_after_updates: Option<usize>,
    /// Progress updates received so far.
    pub progress_updates: AtomicUsize,
    /// Half/float images carry linear light (see `RenderOptions::linear`).
    pub linear: bool,
    /// Clips and the instance carry `kOfxImageEffectPropFrameRange` (false: MLT 7.40, whose
    /// property suite answers `kOfxStatErrUnknown` for it).
    pub frame_range: bool,
}

thread_local! {
    /// (effect address, time) of the Render running on this thread.
    static CURRENT_RENDER: Cell<Option<(usize, f64)>> = const { Cell::new(None) };
    /// Source times fetched by the Render running on this thread.
    static FETCHES: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Mark the start of a render action on this thread (for `--no-temporal` and fetch checks).
pub fn enter_render(effect: &Effect, time: f64) {
    CURRENT_RENDER.with(|c| c.set(Some((effect as *const Effect as usize, time))));
    FETCHES.with(|f| f.borrow_mut().clear());
}

/// Mark the end of a render action; returns the Source times it fetched on this thread.
pub fn leave_render() -> Vec<f64> {
    CURRENT_RENDER.with(|c| c.set(None));
    FETCHES.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

/// The render context of this thread (to hand to threads spawned by the multithread suite).
pub fn render_context() -> Option<(usize, f64)> {
    CURRENT_RENDER.with(|c| c.get())
}

/// Adopt a render context (threads spawned by the multithread suite).
pub fn set_render_context(ctx: Option<(usize, f64)>) {
    CURRENT_RENDER.with(|c| c.set(ctx));
}

/// The time of the render in progress on this thread, if any.
pub fn current_render_time() -> Option<f64> {
    CURRENT_RENDER.with(|c| c.get()).map(|(_, t)| t)
}

/// An image effect: a descriptor (Describe / DescribeInContext) or an instance.
#[repr(C)]
pub struct Effect {
    magic: u64,
    /// Effect properties.
    pub props: PropertySet,
    /// Parameters.
    pub params: ParamSet,
    // Boxed: a clip's address is its OFX handle and must not move when the Vec grows.
    #[allow(clippy::vec_box)]
    clips: Mutex<Vec<Box<Clip>>>,
    /// True for instances.
    pub is_instance: bool,
    session: RwLock<Option<Arc<Session>>>,
    outputs: Mutex<HashMap<u64, Arc<PixelBuffer>>>,
    rods: Mutex<HashMap<u64, OfxRectD>>,
    /// Number of clip images handed out and not yet released.
    pub live_images: AtomicUsize,
}

// SAFETY: all interior state is behind locks or atomics; raw pointers inside (pixel buffers)
// are owned plain memory.
unsafe impl Send for Effect {}
// SAFETY: see above.
unsafe impl Sync for Effect {}

fn time_key(t: f64) -> u64 {
    t.to_bits()
}

impl Effect {
    /// A new descriptor, with the host's defaults for plugin-settable properties.
    pub fn descriptor(file_path: &str) -> Box<Effect> {
        let props = PropertySet::new("effect descriptor");
        props.cstr(kOfxPropType, &[kOfxTypeImageEffect]);
        props.str(kOfxPropLabel, &[""]);
        props.str(kOfxPropShortLabel, &[""]);
        props.str(kOfxPropLongLabel, &[""]);
        props.int(kOfxPropVersion, &[0]);
        props.str(kOfxPropVersionLabel, &[""]);
        props.str(kOfxPropPluginDescription, &[""]);
        props.str(kOfxImageEffectPluginPropGrouping, &[""]);
        props.define(
            kOfxImageEffectPropSupportedContexts,
            PropValue::Str(Vec::new()),
        );
        props.define(
            kOfxImageEffectPropSupportedPixelDepths,
            PropValue::Str(Vec::new()),
        );
        props.int(kOfxImageEffectPluginPropSingleInstance, &[0]);
        props.cstr(
            kOfxImageEffectPluginRenderThreadSafety,
            &[kOfxImageEffectRenderInstanceSafe],
        );
        props.int(kOfxImageEffectPluginPropHostFrameThreading, &[1]);
        props.int(kOfxImageEffectPropSupportsMultiResolution, &[1]);
        props.int(kOfxImageEffectPropSupportsTiles, &[1]);
        props.int(kOfxImageEffectPropTemporalClipAccess, &[0]);
        props.int(kOfxImageEffectPluginPropFieldRenderTwiceAlways, &[1]);
        props.int(kOfxImageEffectPropSupportsMultipleClipDepths, &[0]);
        props.int(kOfxImageEffectPropSupportsMultipleClipPARs, &[0]);
        props.define(
            kOfxImageEffectPropClipPreferencesSlaveParam,
            PropValue::Str(Vec::new()),
        );
        props.ptr(kOfxImageEffectPluginPropOverlayInteractV1, &[0]);
        props.str(kOfxPluginPropFilePath, &[file_path]);
        Box::new(Effect {
            magic: EFFECT_MAGIC,
            props,
            params: ParamSet::new(),
            clips: Mutex::new(Vec::new()),
            is_instance: false,
            session: RwLock::new(None),
            outputs: Mutex::new(HashMap::new()),
            rods: Mutex::new(HashMap::new()),
            live_images: AtomicUsize::new(0),
        })
    }

    /// A descriptor for DescribeInContext: a copy of the main descriptor's properties.
    pub fn context_descriptor(main: &Effect, context: &CStr) -> Box<Effect> {
        let d = Effect::descriptor("");
        d.props.copy_from(&main.props);
        d.props.cstr(kOfxImageEffectPropContext, &[context]);
        d
    }

    /// An instance of a context descriptor, its clips and params copied and given instance
    /// properties; the session decides which input clips are connected.
    pub fn instance_of(desc: &Effect, context: &CStr, session: Arc<Session>) -> Box<Effect> {
        let props = PropertySet::new("effect instance");
        props.copy_from(&desc.props);
        props.cstr(kOfxPropType, &[kOfxTypeImageEffectInstance]);
        props.cstr(kOfxImageEffectPropContext, &[context]);
        props.ptr(kOfxPropInstanceData, &[0]);
        props.int(kOfxPropIsInteractive, &[0]);
        let (w, h) = (session.project.0 as f64, session.project.1 as f64);
        props.dbl(kOfxImageEffectPropProjectSize, &[w, h]);
        props.dbl(kOfxImageEffectPropProjectExtent, &[w, h]);
        props.dbl(kOfxImageEffectPropProjectOffset, &[0.0, 0.0]);
        props.dbl(kOfxImageEffectPropProjectPixelAspectRatio, &[1.0]);
        props.dbl(
            kOfxImageEffectInstancePropEffectDuration,
            &[(session.range.1 - session.range.0 + 1) as f64],
        );
        props.int(kOfxImageEffectInstancePropSequentialRender, &[0]);
        props.dbl(kOfxImageEffectPropFrameRate, &[25.0]);
        props.int(kOfxImageEffectPropRenderQualityDraft, &[0]);
        let range = [session.range.0 as f64, session.range.1 as f64];
        if session.frame_range {
            // Natron and Resolve set the effect's frame range as well as the clips'.
            props.dbl(kOfxImageEffectPropFrameRange, &range);
        }
        let effect = Box::new(Effect {
            magic: EFFECT_MAGIC,
            props,
            params: ParamSet::instance_of(&desc.params, session.minimal_params),
            clips: Mutex::new(Vec::new()),
            is_instance: true,
            session: RwLock::new(Some(session.clone())),
            outputs: Mutex::new(HashMap::new()),
            rods: Mutex::new(HashMap::new()),
            live_images: AtomicUsize::new(0),
        });
        let owner = &*effect as *const Effect as usize;
        let clips: Vec<Box<Clip>> = desc
            .clips
            .lock()
            .iter()
            .map(|dc| {
                let c = Clip::new(&dc.name, owner);
                c.props.copy_from(&dc.props);
                let connected = match dc.name.as_str() {
                    "Output" => true,
                    "Source" => session.source_mode != SourceMode::Unconnected,
                    "Appearance" => session.appearance.is_some(),
                    "FaceMatte" => session.face_matte.is_some(),
                    _ => false,
                };
                c.props.int(kOfxImageClipPropConnected, &[connected as i32]);
                c.props
                    .cstr(kOfxImageEffectPropPixelDepth, &[kOfxBitDepthByte]);
                c.props
                    .cstr(kOfxImageEffectPropComponents, &[kOfxImageComponentRGBA]);
                c.props
                    .cstr(kOfxImageClipPropUnmappedPixelDepth, &[kOfxBitDepthByte]);
                c.props.cstr(
                    kOfxImageClipPropUnmappedComponents,
                    &[kOfxImageComponentRGBA],
                );
                c.props.cstr(
                    kOfxImageEffectPropPreMultiplication,
                    &[kOfxImageUnPreMultiplied],
                );
                c.props.dbl(kOfxImagePropPixelAspectRatio, &[1.0]);
                c.props.dbl(kOfxImageEffectPropFrameRate, &[25.0]);
                c.props.dbl(kOfxImageEffectPropUnmappedFrameRate, &[25.0]);
                if session.frame_range {
                    c.props.dbl(kOfxImageEffectPropFrameRange, &range);
                    c.props.dbl(kOfxImageEffectPropUnmappedFrameRange, &range);
                }
                c.props
                    .cstr(kOfxImageClipPropFieldOrder, &[kOfxImageFieldNone]);
                c.props.int(kOfxImageClipPropContinuousSamples, &[0]);
                if session.linear {
                    // OFX 1.5 colour management: the clip's pixels are scene-linear.
                    c.props.str(
                        openfx::sys::image_effect_v1::colour::kOfxImageClipPropColourspace,
                        &["ofx_scene_linear"],
                    );
                }
                c
            })
            .collect();
        *effect.clips.lock() = clips;
        effect
    }

    /// The handle the plugin sees.
    pub fn handle(&self) -> OfxImageEffectHandle {
        self as *const Effect as OfxImageEffectHandle
    }

    /// Resolve a plugin handle.
    ///
    /// # Safety
    /// `h` must be null or a handle the host handed out.
    pub unsafe fn from_handle<'a>(h: *const c_void) -> Option<&'a Effect> {
        let p = h as *const Effect;
        // SAFETY: per contract; the magic check rejects foreign pointers.
        if unsafe { check_magic(p as *const u64, EFFECT_MAGIC) } {
            Some(unsafe { &*p })
        } else {
            None
        }
    }

    /// The run's session (instances only).
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.read().clone()
    }

    /// Names of the defined clips.
    pub fn clip_names(&self) -> Vec<String> {
        self.clips.lock().iter().map(|c| c.name.clone()).collect()
    }

    /// Look up a clip; the reference lives as long as the effect (clips are boxed, never removed).
    pub fn clip(&self, name: &str) -> Option<&Clip> {
        let clips = self.clips.lock();
        let c = clips.iter().find(|c| c.name == name)?;
        let p: *const Clip = &**c;
        // SAFETY: boxed clips are never removed or moved while the effect lives.
        Some(unsafe { &*p })
    }

    fn define_clip(&self, name: &str) -> &Clip {
        if let Some(c) = self.clip(name) {
            log::warn!("clip {name} defined twice");
            return c;
        }
        let clip = Clip::new(name, self as *const Effect as usize);
        let p: *const Clip = &*clip;
        self.clips.lock().push(clip);
        // SAFETY: the box now lives in the clip list; boxed clips are never removed or moved.
        unsafe { &*p }
    }

    /// Register the output buffer of a render at `time` (so `clipGetImage(Output, time)` works).
    pub fn register_output(&self, time: f64, buf: Arc<PixelBuffer>) {
        self.outputs.lock().insert(time_key(time), buf);
    }

    /// Forget the output buffer of a render at `time`.
    pub fn unregister_output(&self, time: f64) {
        self.outputs.lock().remove(&time_key(time));
    }

    /// Remember the plugin's RoD at `time` (what the Output clip reports).
    pub fn set_rod(&self, time: f64, rod: OfxRectD) {
        self.rods.lock().insert(time_key(time), rod);
    }

    /// The frame the Source clip serves for a request at `time`.
    fn source_time(&self, session: &Session, time: f64) -> f64 {
        if session.temporal {
            return time;
        }
        // MLT: no temporal access, every fetch returns the frame being rendered.
        let me = self as *const Effect as usize;
        if let Some((e, t)) = CURRENT_RENDER.with(|c| c.get()) {
            if e == me {
                return t;
            }
        }
        let outs = self.outputs.lock();
        if outs.len() == 1 {
            if let Some(k) = outs.keys().next() {
                return f64::from_bits(*k);
            }
        }
        time
    }

    /// The FaceMatte frame for `time`, if any (the same temporal rules as the Source).
    pub fn face_matte_frame(&self, time: f64) -> Option<Arc<RgbaImage>> {
        let s = self.session()?;
        let t = self.source_time(&s, time);
        let f = t.round();
        if (t - f).abs() > 1e-6 {
            return None;
        }
        s.face_matte.as_ref()?.get(f as i32)
    }

    /// The Source frame for `time`, if any.
    pub fn source_frame(&self, time: f64) -> Option<Arc<RgbaImage>> {
        let s = self.session()?;
        let t = self.source_time(&s, time);
        let f = t.round();
        if (t - f).abs() > 1e-6 {
            return None;
        }
        s.source.get(f as i32)
    }
}

/// A clip (descriptor or instance). Its address is the `OfxImageClipHandle`.
#[repr(C)]
pub struct Clip {
    magic: u64,
    /// Clip properties.
    pub props: PropertySet,
    /// Clip name.
    pub name: String,
    owner: usize,
}

impl Clip {
    fn new(name: &str, owner: usize) -> Box<Clip> {
        let props = PropertySet::new(format!("clip {name}"));
        props.cstr(kOfxPropType, &[kOfxTypeClip]);
        props.str(kOfxPropName, &[name]);
        props.str(kOfxPropLabel, &[name]);
        props.str(kOfxPropShortLabel, &[name]);
        props.str(kOfxPropLongLabel, &[name]);
        props.define(
            kOfxImageEffectPropSupportedComponents,
            PropValue::Str(Vec::new()),
        );
        props.int(kOfxImageEffectPropTemporalClipAccess, &[0]);
        props.int(kOfxImageClipPropOptional, &[0]);
        props.int(kOfxImageClipPropIsMask, &[0]);
        props.cstr(kOfxImageClipPropFieldExtraction, &[kOfxImageFieldDoubled]);
        props.int(kOfxImageEffectPropSupportsTiles, &[1]);
        Box::new(Clip {
            magic: CLIP_MAGIC,
            props,
            name: name.to_string(),
            owner,
        })
    }

    /// The handle the plugin sees.
    pub fn handle(&self) -> OfxImageClipHandle {
        self as *const Clip as OfxImageClipHandle
    }

    /// Resolve a plugin handle.
    ///
    /// # Safety
    /// `h` must be null or a handle the host handed out.
    pub unsafe fn from_handle<'a>(h: OfxImageClipHandle) -> Option<&'a Clip> {
        let p = h as *const Clip;
        // SAFETY: per contract; the magic check rejects foreign pointers.
        if unsafe { check_magic(p as *const u64, CLIP_MAGIC) } {
            Some(unsafe { &*p })
        } else {
            None
        }
    }

    fn owner(&self) -> &Effect {
        // SAFETY: a clip lives inside its effect's clip list, so the effect outlives it.
        unsafe { &*(self.owner as *const Effect) }
    }

    /// Pixel depth of this clip's images (after clip preferences).
    pub fn depth(&self) -> Depth {
        let s = self
            .props
            .get_string(kOfxImageEffectPropPixelDepth)
            .unwrap_or_default();
        Depth::parse(&s).unwrap_or(Depth::Other(s))
    }

    /// Components of this clip's images (after clip preferences).
    pub fn components(&self) -> Components {
        let s = self
            .props
            .get_string(kOfxImageEffectPropComponents)
            .unwrap_or_default();
        Components::from_ofx(&s).unwrap_or(Components::Rgba)
    }

    /// Whether the clip is connected.
    pub fn connected(&self) -> bool {
        self.props.get_int(kOfxImageClipPropConnected) == Some(1)
    }

    /// The clip's RoD at `time` in canonical coordinates (= pixels here: scale 1, PAR 1).
    pub fn rod(&self, time: f64) -> OfxRectD {
        let zero = OfxRectD {
            x1: 0.0,
            y1: 0.0,
            x2: 0.0,
            y2: 0.0,
        };
        let effect = self.owner();
        let Some(s) = effect.session() else {
            return zero;
        };
        let size = |w: u32, h: u32| OfxRectD {
            x1: 0.0,
            y1: 0.0,
            x2: w as f64,
            y2: h as f64,
        };
        match self.name.as_str() {
            "Output" => effect
                .rods
                .lock()
                .get(&time_key(time))
                .copied()
                .unwrap_or(size(s.project.0, s.project.1)),
            "Source" if s.source_mode == SourceMode::Unconnected => zero,
            "Source" => match effect.source_frame(time) {
                Some(img) => size(img.width(), img.height()),
                None => size(s.project.0, s.project.1),
            },
            "Appearance" => match &s.appearance {
                Some(img) => size(img.width(), img.height()),
                None => zero,
            },
            "FaceMatte" => match effect.face_matte_frame(time) {
                Some(img) => size(img.width(), img.height()),
                None => zero,
            },
            _ => zero,
        }
    }
}

/// An image handed to the plugin: its property set is the handle.
#[repr(C)]
struct Image {
    props: PropertySet,
    _buffer: Arc<PixelBuffer>,
    owner: usize,
}

static IMAGES: LazyLock<Mutex<HashMap<usize, Box<Image>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Number of live images owned by `effect` (leak check at DestroyInstance).
pub fn live_images_of(effect: &Effect) -> usize {
    let me = effect as *const Effect as usize;
    IMAGES.lock().values().filter(|i| i.owner == me).count()
}

/// Release every image `effect` still holds (after reporting the leak).
pub fn drop_images_of(effect: &Effect) {
    let me = effect as *const Effect as usize;
    IMAGES.lock().retain(|_, i| i.owner != me);
}

fn make_image(
    owner: &Effect,
    buffer: Arc<PixelBuffer>,
    rod: OfxRectI,
    premult: &CStr,
    uid: String,
) -> OfxPropertySetHandle {
    let props = PropertySet::new("image");
    props.cstr(kOfxPropType, &[kOfxTypeImage]);
    props.str(kOfxImageEffectPropPixelDepth, &[&buffer.depth.ofx_name()]);
    props.str(kOfxImageEffectPropComponents, &[&buffer.comps.ofx_name()]);
    props.cstr(kOfxImageEffectPropPreMultiplication, &[premult]);
    props.dbl(kOfxImageEffectPropRenderScale, &[1.0, 1.0]);
    props.dbl(kOfxImagePropPixelAspectRatio, &[1.0]);
    props.ptr(kOfxImagePropData, &[buffer.origin as usize]);
    let b = buffer.bounds;
    props.int(kOfxImagePropBounds, &[b.x1, b.y1, b.x2, b.y2]);
    props.int(
        kOfxImagePropRegionOfDefinition,
        &[rod.x1, rod.y1, rod.x2, rod.y2],
    );
    props.int(kOfxImagePropRowBytes, &[buffer.row_bytes as i32]);
    props.cstr(kOfxImagePropField, &[kOfxImageFieldNone]);
    props.str(kOfxImagePropUniqueIdentifier, &[&uid]);
    let img = Box::new(Image {
        props,
        _buffer: buffer,
        owner: owner as *const Effect as usize,
    });
    let h = img.props.handle();
    IMAGES.lock().insert(h as usize, img);
    owner.live_images.fetch_add(1, Ordering::Relaxed);
    h
}

/// Round a canonical rect outward to pixels.
pub fn rect_to_pixels(r: &OfxRectD) -> OfxRectI {
    OfxRectI {
        x1: r.x1.floor() as i32,
        y1: r.y1.floor() as i32,
        x2: r.x2.ceil() as i32,
        y2: r.y2.ceil() as i32,
    }
}

unsafe extern "C" fn get_property_set(
    effect: OfxImageEffectHandle,
    out: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(e) = (unsafe { Effect::from_handle(effect as *const c_void) }) else {
        return kOfxStatErrBadHandle;
    };
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = e.props.handle() };
    kOfxStatOK
}

unsafe extern "C" fn get_param_set(
    effect: OfxImageEffectHandle,
    out: *mut openfx::sys::image_effect_v1::param::OfxParamSetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(e) = (unsafe { Effect::from_handle(effect as *const c_void) }) else {
        return kOfxStatErrBadHandle;
    };
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = e.params.handle() };
    kOfxStatOK
}

unsafe extern "C" fn clip_define(
    effect: OfxImageEffectHandle,
    name: *const c_char,
    out: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(e) = (unsafe { Effect::from_handle(effect as *const c_void) }) else {
        return kOfxStatErrBadHandle;
    };
    if name.is_null() {
        return kOfxStatErrValue;
    }
    if e.is_instance {
        messages::violation("clipDefine called on an instance (only allowed in DescribeInContext)");
        return kOfxStatErrBadHandle;
    }
    // SAFETY: plugin passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let c = e.define_clip(&name);
    if !out.is_null() {
        // SAFETY: out checked non-null.
        unsafe { *out = c.props.handle() };
    }
    kOfxStatOK
}

unsafe extern "C" fn clip_get_handle(
    effect: OfxImageEffectHandle,
    name: *const c_char,
    clip: *mut OfxImageClipHandle,
    props: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(e) = (unsafe { Effect::from_handle(effect as *const c_void) }) else {
        return kOfxStatErrBadHandle;
    };
    if name.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: plugin passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let Some(c) = e.clip(&name) else {
        return kOfxStatErrUnknown;
    };
    if !clip.is_null() {
        // SAFETY: out checked non-null.
        unsafe { *clip = c.handle() };
    }
    if !props.is_null() {
        // SAFETY: out checked non-null.
        unsafe { *props = c.props.handle() };
    }
    kOfxStatOK
}

unsafe extern "C" fn clip_get_property_set(
    clip: OfxImageClipHandle,
    out: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(c) = (unsafe { Clip::from_handle(clip) }) else {
        return kOfxStatErrBadHandle;
    };
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = c.props.handle() };
    kOfxStatOK
}

fn source_image(e: &Effect, c: &Clip, s: &Session, time: f64) -> Option<OfxPropertySetHandle> {
    match (c.name.as_str(), s.source_mode) {
        ("Source", SourceMode::Unconnected | SourceMode::NoImage) => return None,
        ("Source", _) | ("Appearance", _) | ("FaceMatte", _) => {}
        _ => return None,
    }
    let (img, uid) = if c.name == "Appearance" {
        (s.appearance.clone()?, "appearance".to_string())
    } else if c.name == "FaceMatte" {
        (e.face_matte_frame(time)?, format!("face-matte:{time}"))
    } else {
        let t = e.source_time(s, time);
        (e.source_frame(time)?, format!("source:{t}"))
    };
    let rod = OfxRectI {
        x1: 0,
        y1: 0,
        x2: img.width() as i32,
        y2: img.height() as i32,
    };
    let bounds = if c.name == "Source" && s.source_mode == SourceMode::ZeroSize {
        OfxRectI {
            x1: 0,
            y1: 0,
            x2: 0,
            y2: 0,
        }
    } else {
        rod
    };
    let buf = match PixelBuffer::new(bounds, c.depth(), c.components(), s.rows) {
        Ok(b) => b,
        Err(err) => {
            log::error!("{err}");
            return None;
        }
    };
    buf.fill_from_rgba8_as(&img, s.linear);
    Some(make_image(
        e,
        Arc::new(buf),
        rod,
        kOfxImageUnPreMultiplied,
        uid,
    ))
}

unsafe extern "C" fn clip_get_image(
    clip: OfxImageClipHandle,
    time: OfxTime,
    _region: *const OfxRectD,
    out: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(c) = (unsafe { Clip::from_handle(clip) }) else {
        return kOfxStatErrBadHandle;
    };
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = std::ptr::null_mut() };
    let e = c.owner();
    let Some(s) = e.session() else {
        messages::violation(format!("clipGetImage({}) called on a descriptor", c.name));
        return kOfxStatErrBadHandle;
    };
    let handle = if c.name == "Output" {
        let buf = e.outputs.lock().get(&time_key(time)).cloned();
        match buf {
            Some(b) => {
                let rod = rect_to_pixels(&c.rod(time));
                let premult = c
                    .props
                    .get_string(kOfxImageEffectPropPreMultiplication)
                    .unwrap_or_default();
                Some(make_image(
                    e,
                    b,
                    rod,
                    &cstring(&premult),
                    format!("output:{time}"),
                ))
            }
            None => {
                log::warn!("clipGetImage(Output, {time}) outside a render at that time");
                None
            }
        }
    } else {
        if c.name == "Source" {
            FETCHES.with(|f| f.borrow_mut().push(time));
        }
        source_image(e, c, &s, time)
    };
    match handle {
        Some(h) => {
            // SAFETY: out checked non-null.
            unsafe { *out = h };
            kOfxStatOK
        }
        None => kOfxStatFailed,
    }
}

unsafe extern "C" fn clip_release_image(image: OfxPropertySetHandle) -> OfxStatus {
    let removed = IMAGES.lock().remove(&(image as usize));
    match removed {
        Some(img) => {
            // SAFETY: the owner effect outlives its images (leaks are dropped at destroy).
            if let Some(e) = unsafe { Effect::from_handle(img.owner as *const c_void) } {
                e.live_images.fetch_sub(1, Ordering::Relaxed);
            }
            kOfxStatOK
        }
        None => {
            messages::violation("clipReleaseImage on an unknown or already released image");
            kOfxStatErrBadHandle
        }
    }
}

unsafe extern "C" fn clip_get_rod(
    clip: OfxImageClipHandle,
    time: OfxTime,
    out: *mut OfxRectD,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(c) = (unsafe { Clip::from_handle(clip) }) else {
        return kOfxStatErrBadHandle;
    };
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = c.rod(time) };
    kOfxStatOK
}

unsafe extern "C" fn abort(effect: OfxImageEffectHandle) -> c_int {
    // SAFETY: handle checked by magic.
    match unsafe { Effect::from_handle(effect as *const c_void) }.and_then(|e| e.session()) {
        Some(s) => s.abort.load(Ordering::SeqCst) as c_int,
        None => 0,
    }
}

/// `imageMemoryAlloc` blocks.
#[repr(C)]
struct ImageMemory {
    magic: u64,
    data: Vec<u64>,
}

unsafe extern "C" fn image_memory_alloc(
    _effect: OfxImageEffectHandle,
    n: usize,
    out: *mut OfxImageMemoryHandle,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    let words = n.div_ceil(8);
    let mut data = Vec::new();
    if data.try_reserve_exact(words).is_err() {
        return kOfxStatErrMemory;
    }
    data.resize(words, 0u64);
    let m = Box::new(ImageMemory {
        magic: MEMORY_MAGIC,
        data,
    });
    // SAFETY: out checked non-null.
    unsafe { *out = Box::into_raw(m) as OfxImageMemoryHandle };
    kOfxStatOK
}

unsafe fn memory_from<'a>(h: OfxImageMemoryHandle) -> Option<&'a mut ImageMemory> {
    let p = h as *mut ImageMemory;
    // SAFETY: magic check rejects foreign pointers.
    if unsafe { check_magic(p as *const u64, MEMORY_MAGIC) } {
        Some(unsafe { &mut *p })
    } else {
        None
    }
}

unsafe extern "C" fn image_memory_free(h: OfxImageMemoryHandle) -> OfxStatus {
    // SAFETY: checked by magic; allocated by Box::into_raw in image_memory_alloc.
    match unsafe { memory_from(h) } {
        Some(m) => {
            m.magic = 0;
            // SAFETY: allocated by Box::into_raw.
            drop(unsafe { Box::from_raw(h as *mut ImageMemory) });
            kOfxStatOK
        }
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn image_memory_lock(
    h: OfxImageMemoryHandle,
    out: *mut *mut c_void,
) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { memory_from(h) } {
        Some(m) if !out.is_null() => {
            // SAFETY: out checked non-null.
            unsafe { *out = m.data.as_mut_ptr() as *mut c_void };
            kOfxStatOK
        }
        Some(_) => kOfxStatErrValue,
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn image_memory_unlock(h: OfxImageMemoryHandle) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { memory_from(h) } {
        Some(_) => kOfxStatOK,
        None => kOfxStatErrBadHandle,
    }
}

/// The image-effect suite handed to plugins.
pub static IMAGE_EFFECT_SUITE: OfxImageEffectSuiteV1 = OfxImageEffectSuiteV1 {
    getPropertySet: Some(get_property_set),
    getParamSet: Some(get_param_set),
    clipDefine: Some(clip_define),
    clipGetHandle: Some(clip_get_handle),
    clipGetPropertySet: Some(clip_get_property_set),
    clipGetImage: Some(clip_get_image),
    clipReleaseImage: Some(clip_release_image),
    clipGetRegionOfDefinition: Some(clip_get_rod),
    abort: Some(abort),
    imageMemoryAlloc: Some(image_memory_alloc),
    imageMemoryFree: Some(image_memory_free),
    imageMemoryLock: Some(image_memory_lock),
    imageMemoryUnlock: Some(image_memory_unlock),
};
