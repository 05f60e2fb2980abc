//! The effect's parameters, declared once as data ([`PARAMS`]), defined from that table in
//! DescribeInContext, and read back at render time into a typed [`Settings`].
//!
//! Each table entry also says where its value lands in [`Settings`] ([`Store`]) and which
//! `anchor.json` value, if any, it takes when a model folder is chosen ([`ModelDefault`]), so
//! adding a parameter means a script-name constant, one entry and one [`Settings`] field.
//!
//! Script names are camelCase and **frozen**: saved projects, host scripts and farm job files
//! store them. Change a label or hint freely; never rename a script name.
use super::colour::ColourChoice;
use super::error::EffectError;
use crate::engine::model::{FaceDefaults, SamplingDefaults};
use crate::engine::networks::unet::ControlResiduals;
use anchor_ofx::{ParamSet, ParamType, StringMode};
use std::path::{Path, PathBuf};

/// `modelFolder`: the Make-Your-Anchor model folder.
pub const MODEL_FOLDER: &str = "modelFolder";
/// `seed`: the noise seed.
pub const SEED: &str = "seed";
/// `steps`: DDIM steps.
pub const STEPS: &str = "steps";
/// `guidance`: classifier-free guidance scale.
pub const GUIDANCE: &str = "guidance";
/// `controlScale`: ControlNet conditioning scale.
pub const CONTROL_SCALE: &str = "controlScale";
/// `controlResiduals`: how the ControlNet residuals enter the body UNet.
pub const CONTROL_RESIDUALS: &str = "controlResiduals";
/// `window`: frames per temporal window.
pub const WINDOW: &str = "window";
/// `overlap`: frames shared by neighbouring windows.
pub const OVERLAP: &str = "overlap";
/// `fusion`: how overlapping windows are blended.
pub const FUSION: &str = "fusion";
/// `tail`: how the last, partial windows are handled.
pub const TAIL: &str = "tail";
/// `resolution`: working resolution in pixels.
pub const RESOLUTION: &str = "resolution";
/// `faceEnhance`: run the face inpainting pass.
pub const FACE_ENHANCE: &str = "faceEnhance";
/// `faceModelFolder`: the face model folder.
pub const FACE_MODEL_FOLDER: &str = "faceModelFolder";
/// `faceUsePoints`: place the face with the five point parameters.
pub const FACE_USE_POINTS: &str = "faceUsePoints";
/// `faceLeftEye`: the eye on the image's left (the person's right eye).
pub const FACE_LEFT_EYE: &str = "faceLeftEye";
/// `faceRightEye`: the eye on the image's right (the person's left eye).
pub const FACE_RIGHT_EYE: &str = "faceRightEye";
/// `faceNose`: the nose tip.
pub const FACE_NOSE: &str = "faceNose";
/// `faceMouthLeft`: the mouth corner on the image's left.
pub const FACE_MOUTH_LEFT: &str = "faceMouthLeft";
/// `faceMouthRight`: the mouth corner on the image's right.
pub const FACE_MOUTH_RIGHT: &str = "faceMouthRight";
/// The five point parameters in the order of the reference's FFHQ 5-point template
/// (InsightFace order: image-left eye, image-right eye, nose, image-left and image-right mouth
/// corners), the order of the landmarks file too.
pub const FACE_POINTS: [&str; 5] = [
    FACE_LEFT_EYE,
    FACE_RIGHT_EYE,
    FACE_NOSE,
    FACE_MOUTH_LEFT,
    FACE_MOUTH_RIGHT,
];
/// `faceLandmarksFile`: per-frame landmarks, JSON (the CLI's `--face-landmarks` format).
pub const FACE_LANDMARKS_FILE: &str = "faceLandmarksFile";
/// `faceParser`: an optional BiSeNet face-parsing checkpoint whose face classes mask the crop.
pub const FACE_PARSER: &str = "faceParser";
/// `faceSmoothing`: temporal smoothing of the face crop's transform (0 = off).
pub const FACE_SMOOTHING: &str = "faceSmoothing";
/// `faceTemporal`: denoise the face crops jointly in overlapping windows (beyond the paper).
pub const FACE_TEMPORAL: &str = "faceTemporal";
/// `faceWindow`: face crops per window of the temporal face.
pub const FACE_WINDOW: &str = "faceWindow";
/// `faceOverlap`: face crops shared by consecutive windows of the temporal face.
pub const FACE_OVERLAP: &str = "faceOverlap";
/// `faceCrop`: side of the aligned face crop in frame pixels.
pub const FACE_CROP: &str = "faceCrop";
/// `faceSize`: side of the face inpainting in pixels.
pub const FACE_SIZE: &str = "faceSize";
/// `faceSteps`: DDIM steps of the face pass.
pub const FACE_STEPS: &str = "faceSteps";
/// `faceGuidance`: classifier-free guidance of the face pass.
pub const FACE_GUIDANCE: &str = "faceGuidance";
/// `faceControlScale`: head ControlNet conditioning scale.
pub const FACE_CONTROL_SCALE: &str = "faceControlScale";
/// `faceSeed`: seed of the face pass's noise (shared by all frames).
pub const FACE_SEED: &str = "faceSeed";
/// `faceErode`: erosion of the paste-back mask in frame pixels.
pub const FACE_ERODE: &str = "faceErode";
/// `faceBlur`: Gaussian kernel side of the paste-back feather in frame pixels (odd).
pub const FACE_BLUR: &str = "faceBlur";
/// `faceMeshJpeg`: JPEG round trip of the mesh crop before it conditions the face model.
pub const FACE_MESH_JPEG: &str = "faceMeshJpeg";
/// `device`: where the engine runs.
pub const DEVICE: &str = "device";
/// `precision`: floating-point precision of the networks.
pub const PRECISION: &str = "precision";
/// `cacheMiB`: the process-wide cache budget.
pub const CACHE_MIB: &str = "cacheMiB";
/// `preview`: window-local previews instead of exact final frames.
pub const PREVIEW: &str = "preview";
/// `sharedCacheFolder`: the farm-wide cache on shared storage.
pub const SHARED_CACHE_FOLDER: &str = "sharedCacheFolder";
/// Environment variable giving the shared cache folder when `sharedCacheFolder` is empty (render
/// farms set it once for every node, as `anchor render` reads it too).
pub const ENV_SHARED_CACHE: &str = "MAKE_YOUR_ANCHOR_SHARED_CACHE";
/// `colorspace`: the encoding of the host's pixels.
pub const COLORSPACE: &str = "colorspace";
/// `framing`: how the Source plate meets the model's square (squash, fit, region).
pub const FRAMING: &str = "framing";
/// `regionCenter`: the centre of the `region` framing's square.
pub const REGION_CENTER: &str = "regionCenter";
/// `regionSize`: the side of the `region` framing's square.
pub const REGION_SIZE: &str = "regionSize";
/// `outputAlpha`: the Output's alpha (opaque, or the mesh render's silhouette).
pub const OUTPUT_ALPHA: &str = "outputAlpha";
/// `matteFeather`: the feather radius of the silhouette matte.
pub const MATTE_FEATHER: &str = "matteFeather";

/// Environment variable giving the model folder when `modelFolder` is empty (hosts without a
/// parameter UI, farm nodes).
pub const ENV_MODEL_FOLDER: &str = "MAKE_YOUR_ANCHOR_MODEL";

/// Options of `fusion`, in index order.
pub const FUSION_OPTIONS: &[&str] = &["flat", "pyramid", "overlap-linear"];
/// Options of `controlResiduals`, in index order.
pub const CONTROL_RESIDUALS_OPTIONS: &[&str] = &["original", "standard"];
/// Options of `tail`, in index order.
pub const TAIL_OPTIONS: &[&str] = &["paper", "full"];
/// Options of `device`, in index order.
pub const DEVICE_OPTIONS: &[&str] = &["auto", "CPU", "CUDA 0", "CUDA 1", "CUDA 2", "CUDA 3"];
/// Options of `precision`, in index order.
pub const PRECISION_OPTIONS: &[&str] = &["f32", "f16", "bf16"];
/// Options of `colorspace`, in index order.
pub const COLORSPACE_OPTIONS: &[&str] = &["auto", "linear", "sRGB"];
/// Options of `framing`, in index order (the engine's framing names).
pub const FRAMING_OPTIONS: &[&str] = &crate::engine::framing::FRAMING_NAMES;
/// Options of `outputAlpha`, in index order.
pub const OUTPUT_ALPHA_OPTIONS: &[&str] = &["opaque", "silhouette"];

/// A parameter page, mirrored by a group of the same content for hosts that ignore pages
/// (Resolve shows groups, Natron shows pages as tabs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Page script name (frozen).
    pub page: &'static str,
    /// Group script name (frozen).
    pub group: &'static str,
    /// Label shown to people.
    pub label: &'static str,
    /// Hint for the group.
    pub hint: &'static str,
}

/// The "Model" page.
pub const PAGE_MODEL: Page = Page {
    page: "modelPage",
    group: "modelGroup",
    label: "Model",
    hint: "Where the model comes from and where it runs.",
};
/// The "Sampling" page.
pub const PAGE_SAMPLING: Page = Page {
    page: "samplingPage",
    group: "samplingGroup",
    label: "Sampling",
    hint: "How each frame is denoised.",
};
/// The "Temporal" page.
pub const PAGE_TEMPORAL: Page = Page {
    page: "temporalPage",
    group: "temporalGroup",
    label: "Temporal",
    hint: "How frames are batched into windows and blended over time.",
};
/// The "Face" page.
pub const PAGE_FACE: Page = Page {
    page: "facePage",
    group: "faceGroup",
    label: "Face",
    hint: "The optional face enhancement pass.",
};
/// The "Framing" page.
pub const PAGE_FRAMING: Page = Page {
    page: "framingPage",
    group: "framingGroup",
    label: "Framing",
    hint: "How a plate of any shape meets the model's square, and the Output's alpha.",
};
/// All pages, in display order.
pub const PAGES: &[Page] = &[
    PAGE_MODEL,
    PAGE_SAMPLING,
    PAGE_TEMPORAL,
    PAGE_FRAMING,
    PAGE_FACE,
];

/// Type, default and ranges of one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An integer with hard and slider ranges.
    Int {
        /// Default value.
        default: i32,
        /// Hard minimum.
        min: i32,
        /// Hard maximum.
        max: i32,
        /// Slider minimum.
        display_min: i32,
        /// Slider maximum.
        display_max: i32,
    },
    /// A double with hard and slider ranges.
    Double {
        /// Default value.
        default: f64,
        /// Hard minimum.
        min: f64,
        /// Hard maximum.
        max: f64,
        /// Slider minimum.
        display_min: f64,
        /// Slider maximum.
        display_max: f64,
    },
    /// A checkbox.
    Bool {
        /// Default value.
        default: bool,
    },
    /// A menu.
    Choice {
        /// Options, in index order.
        options: &'static [&'static str],
        /// Default option index.
        default: i32,
    },
    /// A directory path with a folder browser; empty by default.
    Directory,
    /// A file path with a file browser; empty by default.
    File,
    /// An animatable position on the image plane (a 2D double in canonical coordinates, OFX's
    /// y-up convention), default (0, 0).
    Point,
    /// An animatable position on the image plane (as [`Kind::Point`]) whose default is the
    /// centre of the project: (0.5, 0.5) in normalised coordinates
    /// (`kOfxParamPropDefaultCoordinateSystem`, OFX 1.2). A host without normalised defaults
    /// shows (0.5, 0.5) canonical; the value is read in canonical coordinates either way.
    CentredPoint,
}

/// Where a parameter's value lands in [`Settings`].
#[derive(Debug, Clone, Copy)]
pub enum Store {
    /// A number, read with `int_at` (int, bool and choice parameters) or `double_at` (double
    /// parameters). A value the host cannot give takes the model folder's default when the entry
    /// has a [`ModelDefault`], else the table default. The same function applies model defaults.
    Number(fn(&mut Settings, ParamValue)),
    /// A path typed as text; empty when the host cannot give it.
    Text(fn(&mut Settings, String)),
    /// A face placement parameter: `faceUsePoints` and the five points are read together into
    /// [`Settings::face_points`] by [`face_points_at`].
    FacePoints,
    /// The `region` framing's square: `regionCenter` and `regionSize` are read together into
    /// [`Settings::region`] by [`region_at`] (also at other frames' times, as they animate).
    Region,
}

/// The `anchor.json` value a parameter takes when the user picks a model folder (and when the
/// host cannot give the parameter).
#[derive(Debug, Clone, Copy)]
pub enum ModelDefault {
    /// A value of the model folder's `defaults`.
    Body(fn(&SamplingDefaults) -> ParamValue),
    /// A value of the face model folder's `face_defaults`.
    Face(fn(&FaceDefaults) -> ParamValue),
}

/// One parameter: script name, label, hint (a full sentence), page, kind, where its value lands
/// in [`Settings`], and the model default it takes, if any.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Script name (frozen).
    pub name: &'static str,
    /// Label shown to people.
    pub label: &'static str,
    /// Tooltip: a full sentence.
    pub hint: &'static str,
    /// The page (and group) holding it.
    pub page: Page,
    /// Type, default and ranges.
    pub kind: Kind,
    /// Where its value lands in [`Settings`].
    pub store: Store,
    /// The `anchor.json` value it takes from a model folder; `None` for the parameters a model
    /// does not recommend.
    pub model_default: Option<ModelDefault>,
}

const fn int(default: i32, min: i32, max: i32, display_min: i32, display_max: i32) -> Kind {
    Kind::Int {
        default,
        min,
        max,
        display_min,
        display_max,
    }
}

const fn double(default: f64, min: f64, max: f64, display_min: f64, display_max: f64) -> Kind {
    Kind::Double {
        default,
        min,
        max,
        display_min,
        display_max,
    }
}

/// A count from `anchor.json` as an int parameter's value (saturating).
fn count(v: usize) -> ParamValue {
    ParamValue::Int(i32::try_from(v).unwrap_or(i32::MAX))
}

/// A seed from `anchor.json` as an int parameter's value (saturating).
fn seed(v: u64) -> ParamValue {
    ParamValue::Int(i32::try_from(v).unwrap_or(i32::MAX))
}

/// Every parameter of the effect, in display order.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: MODEL_FOLDER,
        label: "Model Folder",
        hint: "Folder holding a Make-Your-Anchor model (UNet, ControlNet, VAE and CLIP weights); when empty, the MAKE_YOUR_ANCHOR_MODEL environment variable is used, and without either the Source passes through unchanged; its appearance.png is the reference photo used when the Appearance input is not connected. Choosing a folder whose anchor.json recommends sampling settings sets Steps, Guidance, Control Scale, Window, Overlap, Resolution and Seed to them.",
        page: PAGE_MODEL,
        kind: Kind::Directory,
        store: Store::Text(|s, v| s.model_folder = v),
        model_default: None,
    },
    ParamSpec {
        name: DEVICE,
        label: "Device",
        hint: "Where the networks run: auto picks the first CUDA GPU when there is one and the CPU otherwise.",
        page: PAGE_MODEL,
        kind: Kind::Choice {
            options: DEVICE_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.device = Device::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: PRECISION,
        label: "Precision",
        hint: "Floating-point precision of the networks: f32 is the reference. On GPUs f16 and bf16 halve memory and are faster; on CPUs with bf16 dot products (AMX, AVX-512 BF16) bf16 runs the matrix products in bf16 and is faster, elsewhere it runs as f32.",
        page: PAGE_MODEL,
        kind: Kind::Choice {
            options: PRECISION_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.precision = Precision::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: CACHE_MIB,
        label: "Cache (MiB)",
        hint: "Memory in MiB that the process-wide frame cache may use, shared by every instance of the effect.",
        page: PAGE_MODEL,
        kind: int(4096, 0, 1 << 20, 0, 32768),
        store: Store::Number(|s, v| s.cache_mib = v.int()),
        model_default: None,
    },
    ParamSpec {
        name: PREVIEW,
        label: "Preview",
        hint: "Render each frame from its own window alone, denoised with no coupling to its neighbours: about Steps network batches per window instead of the whole clip's dependency cone, for scrubbing and viewers. Previews are never used as final frames. The host's draft render quality and interactive (viewer) renders turn this on too, unless a final render runs on the same instance.",
        page: PAGE_MODEL,
        kind: Kind::Bool { default: false },
        store: Store::Number(|s, v| s.preview = v.flag()),
        model_default: None,
    },
    ParamSpec {
        name: SHARED_CACHE_FOLDER,
        label: "Shared Cache Folder",
        hint: "A folder on the render farm's shared storage (NFS/SMB) that every machine rendering this clip names: they claim, compute and publish window batches there and read each other's, so a farm split shares the work instead of repeating it, with identical frames. When empty, the MAKE_YOUR_ANCHOR_SHARED_CACHE environment variable is used; without either, each process works alone.",
        page: PAGE_MODEL,
        kind: Kind::Directory,
        store: Store::Text(|s, v| s.shared_cache_folder = v),
        model_default: None,
    },
    ParamSpec {
        name: COLORSPACE,
        label: "Colorspace",
        hint: "Encoding of the Source, Appearance and Output pixels: auto reads the host's OFX colour-management properties, else assumes linear light for Natron and Nuke float images and sRGB otherwise; the model always sees sRGB-encoded pictures.",
        page: PAGE_MODEL,
        kind: Kind::Choice {
            options: COLORSPACE_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.colour = colour_from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: SEED,
        label: "Seed",
        hint: "Seed of the initial noise: the same seed and inputs give the same frames.",
        page: PAGE_SAMPLING,
        kind: int(42, 0, i32::MAX, 0, 1000),
        store: Store::Number(|s, v| s.seed = v.int()),
        model_default: Some(ModelDefault::Body(|d| seed(d.seed))),
    },
    ParamSpec {
        name: STEPS,
        label: "Steps",
        hint: "Number of DDIM denoising steps: more steps are slower and usually cleaner.",
        page: PAGE_SAMPLING,
        kind: int(20, 1, 1000, 1, 100),
        store: Store::Number(|s, v| s.steps = v.int()),
        model_default: Some(ModelDefault::Body(|d| count(d.steps))),
    },
    ParamSpec {
        name: GUIDANCE,
        label: "Guidance",
        hint: "Classifier-free guidance scale: higher values follow the appearance more strictly.",
        page: PAGE_SAMPLING,
        kind: double(7.5, 0.0, 50.0, 1.0, 15.0),
        store: Store::Number(|s, v| s.guidance = v.double()),
        model_default: Some(ModelDefault::Body(|d| ParamValue::Double(d.guidance_scale))),
    },
    ParamSpec {
        name: CONTROL_SCALE,
        label: "Control Scale",
        hint: "Strength of the ControlNet conditioning on the mesh render.",
        page: PAGE_SAMPLING,
        kind: double(2.0, 0.0, 10.0, 0.0, 4.0),
        store: Store::Number(|s, v| s.control_scale = v.double()),
        model_default: Some(ModelDefault::Body(|d| ParamValue::Double(d.control_scale))),
    },
    ParamSpec {
        name: CONTROL_RESIDUALS,
        label: "Control Residuals",
        hint: "How the ControlNet guidance enters the body network: original adds it as the original Make-Your-Anchor inference code does (its last down residual also feeds the middle block; this produced the paper's results), standard adds it as diffusers and the training code do, for a model meant to run exactly as trained.",
        page: PAGE_SAMPLING,
        kind: Kind::Choice {
            options: CONTROL_RESIDUALS_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.control_residuals = control_residuals_from_index(v.int())),
        model_default: Some(ModelDefault::Body(|d| ParamValue::Int(control_residuals_index(d.control_residuals)))),
    },
    ParamSpec {
        name: RESOLUTION,
        label: "Resolution",
        hint: "Working resolution in pixels of the square the frames are resized to before diffusion.",
        page: PAGE_SAMPLING,
        kind: int(512, 64, 2048, 256, 1024),
        store: Store::Number(|s, v| s.resolution = v.int()),
        model_default: Some(ModelDefault::Body(|d| count(d.width))),
    },
    ParamSpec {
        name: WINDOW,
        label: "Window",
        hint: "Number of frames denoised together in one temporal window.",
        page: PAGE_TEMPORAL,
        kind: int(16, 1, 256, 2, 32),
        store: Store::Number(|s, v| s.window = v.int()),
        model_default: Some(ModelDefault::Body(|d| count(d.window))),
    },
    ParamSpec {
        name: OVERLAP,
        label: "Overlap",
        hint: "Number of frames shared by neighbouring windows; it must be smaller than the window.",
        page: PAGE_TEMPORAL,
        kind: int(4, 0, 255, 0, 16),
        store: Store::Number(|s, v| s.overlap = v.int()),
        model_default: Some(ModelDefault::Body(|d| count(d.overlap))),
    },
    ParamSpec {
        name: FUSION,
        label: "Fusion",
        hint: "How the noise predictions of overlapping windows are blended: flat averages them as the paper does, pyramid and overlap-linear weight frames by their position in the window.",
        page: PAGE_TEMPORAL,
        kind: Kind::Choice {
            options: FUSION_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.fusion = Fusion::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: TAIL,
        label: "Tail",
        hint: "How the end of the clip is windowed: paper reproduces the reference implementation, full also denoises the last frames with complete windows.",
        page: PAGE_TEMPORAL,
        kind: Kind::Choice {
            options: TAIL_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.tail = Tail::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: FRAMING,
        label: "Framing",
        hint: "How the Source plate meets the model's square working resolution: fit pads the plate to a square around its centre with black (the mesh render's background) and crops the result back, keeping the plate's shape; region renders the square Region of interest placed below, black and transparent outside it; squash stretches the plate to the square and back, as the original Make-Your-Anchor (distorted unless the plate is square). The Output always has the Source's size.",
        page: PAGE_FRAMING,
        kind: Kind::Choice {
            options: FRAMING_OPTIONS,
            default: 1,
        },
        store: Store::Number(|s, v| s.framing = Framing::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: REGION_CENTER,
        label: "Region Center",
        hint: "Centre of the square region of interest of the region framing, in canonical image coordinates with y up (the plate's centre by default); keyframe it or link it to a tracker to follow the person.",
        page: PAGE_FRAMING,
        kind: Kind::CentredPoint,
        store: Store::Region,
        model_default: None,
    },
    ParamSpec {
        name: REGION_SIZE,
        label: "Region Size",
        hint: "Side in pixels of the square region of interest of the region framing, which may leave the plate (the outside is padded black); 0 takes the plate's shorter side.",
        page: PAGE_FRAMING,
        kind: double(0.0, 0.0, 16384.0, 0.0, 4096.0),
        store: Store::Region,
        model_default: None,
    },
    ParamSpec {
        name: OUTPUT_ALPHA,
        label: "Output Alpha",
        hint: "Alpha of the Output: opaque (1 over the plate, 0 outside a region), or silhouette, a matte of the person from the Source mesh render (pixels brighter than its black background), feathered by Matte Feather, with the colour premultiplied by it so that the presenter composites over any background.",
        page: PAGE_FRAMING,
        kind: Kind::Choice {
            options: OUTPUT_ALPHA_OPTIONS,
            default: 0,
        },
        store: Store::Number(|s, v| s.output_alpha = OutputAlpha::from_index(v.int())),
        model_default: None,
    },
    ParamSpec {
        name: MATTE_FEATHER,
        label: "Matte Feather",
        hint: "Radius in Source pixels of the box blur that softens the silhouette matte's edge (0 keeps it hard).",
        page: PAGE_FRAMING,
        kind: int(2, 0, 1000, 0, 32),
        store: Store::Number(|s, v| s.matte_feather = v.int()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_ENHANCE,
        label: "Face Enhance",
        hint: "Run the face inpainting pass after the body pass, using the face model folder.",
        page: PAGE_FACE,
        kind: Kind::Bool { default: false },
        store: Store::Number(|s, v| s.face_enhance = v.flag()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_MODEL_FOLDER,
        label: "Face Model Folder",
        hint: "Folder holding the Make-Your-Anchor face model used when Face Enhance is on: a 9-channel inpainting unet/ (or a head/ subfolder), controlnet/, vae/, scheduler/, text_encoder/ and image_encoder/. Choosing a folder whose anchor.json has face_defaults sets the face settings below to them.",
        page: PAGE_FACE,
        kind: Kind::Directory,
        store: Store::Text(|s, v| s.face_model_folder = v),
        model_default: None,
    },
    ParamSpec {
        name: FACE_USE_POINTS,
        label: "Use Face Points",
        hint: "Place the face with the five face points below at the frames where this is on (it can be animated); without a FaceMatte input they come before the landmarks file.",
        page: PAGE_FACE,
        kind: Kind::Bool { default: false },
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_LEFT_EYE,
        label: "Left Eye",
        hint: "Centre of the eye on the image's left (the person's right eye), in canonical image coordinates with y up; keyframe it or link it to a tracker.",
        page: PAGE_FACE,
        kind: Kind::Point,
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_RIGHT_EYE,
        label: "Right Eye",
        hint: "Centre of the eye on the image's right (the person's left eye), in canonical image coordinates with y up.",
        page: PAGE_FACE,
        kind: Kind::Point,
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_NOSE,
        label: "Nose",
        hint: "Tip of the nose, in canonical image coordinates with y up.",
        page: PAGE_FACE,
        kind: Kind::Point,
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_MOUTH_LEFT,
        label: "Mouth Left",
        hint: "Corner of the mouth on the image's left, in canonical image coordinates with y up.",
        page: PAGE_FACE,
        kind: Kind::Point,
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_MOUTH_RIGHT,
        label: "Mouth Right",
        hint: "Corner of the mouth on the image's right, in canonical image coordinates with y up.",
        page: PAGE_FACE,
        kind: Kind::Point,
        store: Store::FacePoints,
        model_default: None,
    },
    ParamSpec {
        name: FACE_LANDMARKS_FILE,
        label: "Landmarks File",
        hint: "JSON file mapping each frame of the Source clip (its 0-based index, as 000012 or 12) to five [x, y] points in Source pixels with y down (the format of anchor render --face-landmarks); used where neither the FaceMatte input nor the face points place the face.",
        page: PAGE_FACE,
        kind: Kind::File,
        store: Store::Text(|s, v| s.face_landmarks_file = v),
        model_default: None,
    },
    ParamSpec {
        name: FACE_PARSER,
        label: "Face Parser",
        hint: "Optional BiSeNet face-parsing checkpoint (face-parsing.PyTorch 79999_iter.pth, non-commercial weights, see the README): when set and no FaceMatte input is connected, the face mask inside the crop is the parser's classes 1-13 instead of the landmark template's ellipse.",
        page: PAGE_FACE,
        kind: Kind::File,
        store: Store::Text(|s, v| s.face_parser = v),
        model_default: None,
    },
    ParamSpec {
        name: FACE_SMOOTHING,
        label: "Smoothing",
        hint: "Temporal smoothing of the face crop's placement, from 0 (off, as the reference) towards 1 (steadier crops that follow motion more slowly); a jittery crop flickers.",
        page: PAGE_FACE,
        kind: double(0.0, 0.0, 0.95, 0.0, 0.95),
        store: Store::Number(|s, v| s.face_smoothing = v.double()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_TEMPORAL,
        label: "Temporal Face",
        hint: "Beyond the paper: denoise the face crops of the clip together in overlapping windows with the inflated head UNet, as the body is, instead of frame by frame; use it with Smoothing so that the crops are stably aligned (needs temporal clip access).",
        page: PAGE_FACE,
        kind: Kind::Bool { default: false },
        store: Store::Number(|s, v| s.face_temporal = v.flag()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_WINDOW,
        label: "Face Window",
        hint: "Number of face crops denoised together in one window of the temporal face.",
        page: PAGE_FACE,
        kind: int(16, 1, 256, 2, 32),
        store: Store::Number(|s, v| s.face_window = v.int()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_OVERLAP,
        label: "Face Overlap",
        hint: "Number of face crops shared by neighbouring windows of the temporal face; it must be smaller than the face window.",
        page: PAGE_FACE,
        kind: int(4, 0, 255, 0, 16),
        store: Store::Number(|s, v| s.face_overlap = v.int()),
        model_default: None,
    },
    ParamSpec {
        name: FACE_CROP,
        label: "Face Crop",
        hint: "Side in frame pixels of the square aligned crop around the face (the reference's 512).",
        page: PAGE_FACE,
        kind: int(512, 16, 4096, 64, 1024),
        store: Store::Number(|s, v| s.face_crop = v.int()),
        model_default: Some(ModelDefault::Face(|f| count(f.crop))),
    },
    ParamSpec {
        name: FACE_SIZE,
        label: "Face Size",
        hint: "Side in pixels at which the face is inpainted, a multiple of 8 (the reference's 256).",
        page: PAGE_FACE,
        kind: int(256, 8, 2048, 64, 512),
        store: Store::Number(|s, v| s.face_size = v.int()),
        model_default: Some(ModelDefault::Face(|f| count(f.size))),
    },
    ParamSpec {
        name: FACE_STEPS,
        label: "Face Steps",
        hint: "Number of DDIM steps of the face pass (the reference's 20).",
        page: PAGE_FACE,
        kind: int(20, 1, 1000, 1, 100),
        store: Store::Number(|s, v| s.face_steps = v.int()),
        model_default: Some(ModelDefault::Face(|f| count(f.steps))),
    },
    ParamSpec {
        name: FACE_GUIDANCE,
        label: "Face Guidance",
        hint: "Classifier-free guidance scale of the face pass (the reference's 3.5).",
        page: PAGE_FACE,
        kind: double(3.5, 0.0, 50.0, 1.0, 15.0),
        store: Store::Number(|s, v| s.face_guidance = v.double()),
        model_default: Some(ModelDefault::Face(|f| ParamValue::Double(f.guidance_scale))),
    },
    ParamSpec {
        name: FACE_CONTROL_SCALE,
        label: "Face Control Scale",
        hint: "Strength of the head ControlNet's conditioning on the mesh crop (the reference's 1.0).",
        page: PAGE_FACE,
        kind: double(1.0, 0.0, 10.0, 0.0, 4.0),
        store: Store::Number(|s, v| s.face_control_scale = v.double()),
        model_default: Some(ModelDefault::Face(|f| ParamValue::Double(f.control_scale))),
    },
    ParamSpec {
        name: FACE_SEED,
        label: "Face Seed",
        hint: "Seed of the face pass's initial noise, shared by every frame.",
        page: PAGE_FACE,
        kind: int(999, 0, i32::MAX, 0, 1000),
        store: Store::Number(|s, v| s.face_seed = v.int()),
        model_default: Some(ModelDefault::Face(|f| seed(f.seed))),
    },
    ParamSpec {
        name: FACE_ERODE,
        label: "Face Erode",
        hint: "Side in frame pixels of the erosion of the paste-back mask (the reference's 40).",
        page: PAGE_FACE,
        kind: int(40, 0, 1024, 0, 100),
        store: Store::Number(|s, v| s.face_erode = v.int()),
        model_default: Some(ModelDefault::Face(|f| count(f.erode))),
    },
    ParamSpec {
        name: FACE_BLUR,
        label: "Face Feather",
        hint: "Side in frame pixels of the Gaussian feather of the paste-back mask, an odd number (the reference's 41).",
        page: PAGE_FACE,
        kind: int(41, 1, 1023, 1, 101),
        store: Store::Number(|s, v| s.face_blur = v.int()),
        model_default: Some(ModelDefault::Face(|f| count(f.blur))),
    },
    ParamSpec {
        name: FACE_MESH_JPEG,
        label: "Face Mesh JPEG",
        hint: "Put the mesh crop through a JPEG round trip (quality 95) before it conditions the face model, as the reference does when it saves the aligned crop as a JPEG file; its face models were trained on such crops.",
        page: PAGE_FACE,
        kind: Kind::Bool { default: true },
        store: Store::Number(|s, v| s.face_mesh_jpeg = v.flag()),
        model_default: Some(ModelDefault::Face(|f| ParamValue::Int(i32::from(f.mesh_jpeg)))),
    },
];

/// Define every page, group and parameter of [`PARAMS`] on a context descriptor's parameter set.
pub fn define_all(params: ParamSet) -> anchor_ofx::Result<()> {
    for page in PAGES {
        params
            .define(ParamType::Group, page.group)?
            .label(page.label)?
            .hint(page.hint)?
            .script_name(page.group)?
            .group_open(true)?;
    }
    for spec in PARAMS {
        define(params, spec)?;
    }
    for page in PAGES {
        // Natron and openfx-misc list both the group and the parameters inside it as children.
        let mut children = vec![page.group];
        children.extend(PARAMS.iter().filter(|p| p.page == *page).map(|p| p.name));
        params
            .define(ParamType::Page, page.page)?
            .label(page.label)?
            .page_children(&children)?;
    }
    Ok(())
}

fn define(params: ParamSet, spec: &ParamSpec) -> anchor_ofx::Result<()> {
    let kind = match spec.kind {
        Kind::Int { .. } => ParamType::Int,
        Kind::Double { .. } => ParamType::Double,
        Kind::Bool { .. } => ParamType::Bool,
        Kind::Choice { .. } => ParamType::Choice,
        Kind::Directory | Kind::File => ParamType::String,
        Kind::Point | Kind::CentredPoint => ParamType::Double2D,
    };
    let def = params.define(kind, spec.name)?;
    def.label(spec.label)?
        .hint(spec.hint)?
        .script_name(spec.name)?
        .parent(spec.page.group)?;
    // A temporal model needs the same settings across a window: nothing animates but the face
    // placement, which follows the head from frame to frame, and the framing region, which
    // follows the person (each frame is framed with the region at its own time).
    def.animates(spec.animates())?;
    match spec.kind {
        Kind::Int {
            default,
            min,
            max,
            display_min,
            display_max,
        } => {
            def.default_int(default)?
                .range_int(min, max, display_min, display_max)?;
        }
        Kind::Double {
            default,
            min,
            max,
            display_min,
            display_max,
        } => {
            def.default_double(default)?
                .range_double(min, max, display_min, display_max)?
                .increment(0.1, 2)?;
        }
        Kind::Bool { default } => {
            def.default_bool(default)?;
        }
        Kind::Choice { options, default } => {
            def.choice_options(options)?.default_int(default)?;
        }
        Kind::Directory => {
            def.string_mode(StringMode::DirectoryPath)?
                .default_string("")?;
        }
        Kind::File => {
            def.string_mode(StringMode::FilePath)?.default_string("")?;
        }
        Kind::Point => {
            def.xy_absolute_canonical()?.default_double2d(0.0, 0.0)?;
        }
        Kind::CentredPoint => {
            def.xy_absolute_canonical()?.default_double2d(0.5, 0.5)?;
            let normalised = anchor_ofx::names::kOfxParamCoordinatesNormalised
                .to_str()
                .unwrap_or_default();
            if let Err(e) = def.properties().set_string(
                anchor_ofx::names::kOfxParamPropDefaultCoordinateSystem,
                0,
                normalised,
            ) {
                log::debug!("{}: the host has no normalised defaults ({e})", spec.name);
            }
        }
    }
    Ok(())
}

impl ParamSpec {
    /// Whether the value may be keyframed: only the face placement (points and their switch)
    /// and the framing region.
    pub fn animates(&self) -> bool {
        matches!(self.kind, Kind::Point | Kind::CentredPoint)
            || self.name == FACE_USE_POINTS
            || self.name == REGION_SIZE
    }
}

/// `fusion` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fusion {
    /// Plain mean of overlapping predictions (the paper).
    #[default]
    Flat,
    /// Pyramid weights, highest at the window centre.
    Pyramid,
    /// Linear ramps over the overlap.
    OverlapLinear,
}

/// `tail` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tail {
    /// As the reference implementation: short and redundant tail windows are kept.
    #[default]
    Paper,
    /// Complete windows up to the last frame.
    Full,
}

/// `framing` values (the engine's [`crate::engine::framing::Framing`] without the region's
/// square, which comes from `regionCenter` and `regionSize` at each frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Stretch the plate to the square and back (the original).
    Squash,
    /// Pad the plate to a square around its centre.
    #[default]
    Fit,
    /// A square region of interest.
    Region,
}

/// `outputAlpha` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputAlpha {
    /// 1 wherever the frame is rendered.
    #[default]
    Opaque,
    /// The Source mesh render's feathered silhouette, colour premultiplied.
    Silhouette,
}

/// The `region` framing's square as the parameters give it at one time: canonical
/// coordinates, y up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RegionParams {
    /// `regionCenter`; `None` for the plate's centre: the host cannot give it, or it is the
    /// untouched default (see [`region_at`]).
    pub center: Option<[f64; 2]>,
    /// `regionSize`; 0 or less takes the plate's shorter side.
    pub size: f64,
}

/// `device` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// First CUDA GPU if any, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(u8),
}

/// `precision` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit float.
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// An option index from the host, checked against the table; out-of-range indices (a project
/// saved by a newer version) fall back to the default, with a warning.
fn option(name: &str, index: i32, options: &[&str]) -> usize {
    match usize::try_from(index) {
        Ok(i) if i < options.len() => i,
        _ => {
            log::warn!(
                "{name}: option index {index} is out of range, using {}",
                options[0]
            );
            0
        }
    }
}

fn control_residuals_from_index(i: i32) -> ControlResiduals {
    match option(CONTROL_RESIDUALS, i, CONTROL_RESIDUALS_OPTIONS) {
        1 => ControlResiduals::Standard,
        _ => ControlResiduals::Original,
    }
}

/// The option index of `controlResiduals` that means `c`.
pub fn control_residuals_index(c: ControlResiduals) -> i32 {
    match c {
        ControlResiduals::Original => 0,
        ControlResiduals::Standard => 1,
    }
}

fn colour_from_index(i: i32) -> ColourChoice {
    match option(COLORSPACE, i, COLORSPACE_OPTIONS) {
        1 => ColourChoice::Linear,
        2 => ColourChoice::Srgb,
        _ => ColourChoice::Auto,
    }
}

/// `colorspace`'s first option, `auto` (the table default), so that [`Settings`] has a
/// `Default` to read into.
impl Default for ColourChoice {
    fn default() -> Self {
        Self::Auto
    }
}

impl Fusion {
    fn from_index(i: i32) -> Self {
        match option(FUSION, i, FUSION_OPTIONS) {
            1 => Self::Pyramid,
            2 => Self::OverlapLinear,
            _ => Self::Flat,
        }
    }
}

impl Tail {
    fn from_index(i: i32) -> Self {
        match option(TAIL, i, TAIL_OPTIONS) {
            1 => Self::Full,
            _ => Self::Paper,
        }
    }
}

impl Framing {
    /// An unknown index falls back to the table default, fit, rather than to the first option
    /// (squash would distort the plate).
    fn from_index(i: i32) -> Self {
        match i {
            0 => Self::Squash,
            1 => Self::Fit,
            2 => Self::Region,
            _ => {
                log::warn!("{FRAMING}: option index {i} is out of range, using fit");
                Self::Fit
            }
        }
    }
}

impl OutputAlpha {
    fn from_index(i: i32) -> Self {
        match option(OUTPUT_ALPHA, i, OUTPUT_ALPHA_OPTIONS) {
            1 => Self::Silhouette,
            _ => Self::Opaque,
        }
    }
}

impl Device {
    fn from_index(i: i32) -> Self {
        match option(DEVICE, i, DEVICE_OPTIONS) {
            0 => Self::Auto,
            1 => Self::Cpu,
            n => Self::Cuda((n - 2) as u8),
        }
    }
}

impl Precision {
    fn from_index(i: i32) -> Self {
        match option(PRECISION, i, PRECISION_OPTIONS) {
            1 => Self::F16,
            2 => Self::Bf16,
            _ => Self::F32,
        }
    }
}

/// Every parameter's value at one time, read at render time (OFX does not promise an
/// InstanceChanged after a project load, and the UI may change values while we render). Its
/// `Default` is the empty value [`Settings::read`] starts from, not the table defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    /// `modelFolder` as typed (may be empty).
    pub model_folder: String,
    /// `seed`.
    pub seed: i32,
    /// `steps`.
    pub steps: i32,
    /// `guidance`.
    pub guidance: f64,
    /// `controlScale`.
    pub control_scale: f64,
    /// `controlResiduals`.
    pub control_residuals: ControlResiduals,
    /// `window`.
    pub window: i32,
    /// `overlap`.
    pub overlap: i32,
    /// `fusion`.
    pub fusion: Fusion,
    /// `tail`.
    pub tail: Tail,
    /// `resolution`.
    pub resolution: i32,
    /// `faceEnhance`.
    pub face_enhance: bool,
    /// `faceModelFolder`.
    pub face_model_folder: String,
    /// The five face points at this time (canonical coordinates, y up, [`FACE_POINTS`] order)
    /// when `faceUsePoints` is on and the host gives all five; `None` otherwise.
    pub face_points: Option<[[f64; 2]; 5]>,
    /// `faceLandmarksFile` as typed (may be empty).
    pub face_landmarks_file: String,
    /// `faceParser` as typed (may be empty).
    pub face_parser: String,
    /// `faceSmoothing` (0 = off).
    pub face_smoothing: f64,
    /// `faceTemporal`.
    pub face_temporal: bool,
    /// `faceWindow`.
    pub face_window: i32,
    /// `faceOverlap`.
    pub face_overlap: i32,
    /// `faceCrop`.
    pub face_crop: i32,
    /// `faceSize`.
    pub face_size: i32,
    /// `faceSteps`.
    pub face_steps: i32,
    /// `faceGuidance`.
    pub face_guidance: f64,
    /// `faceControlScale`.
    pub face_control_scale: f64,
    /// `faceSeed`.
    pub face_seed: i32,
    /// `faceErode`.
    pub face_erode: i32,
    /// `faceBlur`.
    pub face_blur: i32,
    /// `faceMeshJpeg`.
    pub face_mesh_jpeg: bool,
    /// `device`.
    pub device: Device,
    /// `precision`.
    pub precision: Precision,
    /// `cacheMiB`.
    pub cache_mib: i32,
    /// `sharedCacheFolder` as typed (may be empty).
    pub shared_cache_folder: String,
    /// `preview`.
    pub preview: bool,
    /// `colorspace`.
    pub colour: ColourChoice,
    /// `framing`.
    pub framing: Framing,
    /// `regionCenter` and `regionSize` at this time.
    pub region: RegionParams,
    /// `outputAlpha`.
    pub output_alpha: OutputAlpha,
    /// `matteFeather`.
    pub matte_feather: i32,
}

impl Settings {
    /// Read every parameter at `time`. A value the host cannot give (the OpenFX demo host has
    /// no string parameters and cannot read integer values) takes the model folder's default
    /// (`anchor.json` → `defaults`, when a model folder is known) or else its default from
    /// [`PARAMS`], with a warning logged once per parameter, so such hosts still render.
    pub fn read(params: ParamSet, time: f64) -> anchor_ofx::Result<Self> {
        let mut settings = Self::default();
        let mut missed = Vec::<&'static str>::new();
        // Body sampling parameters still at the table default: with the model folder from
        // `MAKE_YOUR_ANCHOR_MODEL` they take its `anchor.json` values, as `anchor render` does.
        let mut untouched = Vec::<&'static str>::new();
        for spec in PARAMS {
            let name = spec.name;
            match spec.store {
                Store::Number(store) => {
                    let value = match spec.kind {
                        Kind::Double { .. } => params
                            .param(name)
                            .and_then(|p| p.double_at(time))
                            .map(ParamValue::Double)
                            .unwrap_or_else(|e| {
                                missed.push(name);
                                ParamValue::Double(fallback(name, &e, default_double(name)))
                            }),
                        _ => params
                            .param(name)
                            .and_then(|p| p.int_at(time))
                            .map(ParamValue::Int)
                            .unwrap_or_else(|e| {
                                missed.push(name);
                                ParamValue::Int(fallback(name, &e, default_int(name)))
                            }),
                    };
                    if matches!(spec.model_default, Some(ModelDefault::Body(_)))
                        && value == table_default(spec)
                    {
                        untouched.push(name);
                    }
                    store(&mut settings, value);
                }
                Store::Text(store) => {
                    let text = params
                        .param(name)
                        .and_then(|p| p.string_at(time))
                        .unwrap_or_else(|e| fallback(name, &e, String::new()));
                    store(&mut settings, text);
                }
                Store::FacePoints | Store::Region => {}
            }
        }
        settings.face_points = face_points_at(params, time);
        settings.region = region_at(params, time);
        if settings.model_folder.trim().is_empty() {
            missed.extend(untouched);
        }
        if !missed.is_empty() {
            settings.apply_model_defaults(&missed);
        }
        Ok(settings)
    }

    /// Replace the sampling values named in `missed` by the model folder's `anchor.json`
    /// defaults (the face values by the face model folder's `face_defaults`), when a model
    /// folder is known and readable.
    fn apply_model_defaults(&mut self, missed: &[&str]) {
        let env = std::env::var(ENV_MODEL_FOLDER).ok();
        let body = match resolve_model_folder(&self.model_folder, env.as_deref()) {
            Ok(Some(folder)) => model_default_values(&folder, DefaultsPart::Body),
            _ => Vec::new(),
        };
        let face_folder = PathBuf::from(self.face_model_folder.trim());
        let face = model_default_values(&face_folder, DefaultsPart::Face);
        for (name, value) in body.into_iter().chain(face) {
            if !missed.contains(&name) {
                continue;
            }
            if let Some(Store::Number(store)) = spec(name).map(|p| p.store) {
                store(self, value);
            }
        }
    }
}

/// A value the effect gives one of its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    /// An integer parameter's value.
    Int(i32),
    /// A double parameter's value.
    Double(f64),
}

impl ParamValue {
    /// As an int, bool or choice parameter's value (a double is truncated).
    fn int(self) -> i32 {
        match self {
            Self::Int(i) => i,
            Self::Double(d) => d as i32,
        }
    }

    /// As a double parameter's value.
    fn double(self) -> f64 {
        match self {
            Self::Int(i) => f64::from(i),
            Self::Double(d) => d,
        }
    }

    /// As a bool parameter's value (OFX bools are ints: non-zero is on).
    fn flag(self) -> bool {
        self.int() != 0
    }
}

/// Which defaults of a model folder's `anchor.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultsPart {
    /// `defaults`: the body's sampling settings (steps, guidance, control scale, window,
    /// overlap, resolution, seed).
    Body,
    /// `face_defaults`: the face pass's settings (crop, size, steps, guidance, control scale,
    /// seed, erode, blur, mesh JPEG).
    Face,
}

/// The parameter values a model folder's `anchor.json` recommends, by script name, in table
/// order (the [`ModelDefault`]s of [`PARAMS`] for `part`): empty when the folder cannot be
/// resolved or has no `anchor.json` (a plain diffusers folder keeps the parameters as they
/// are). Keys the file leaves out give the reference's values.
pub fn model_default_values(folder: &Path, part: DefaultsPart) -> Vec<(&'static str, ParamValue)> {
    if folder.as_os_str().is_empty() {
        return Vec::new();
    }
    let layout = match crate::engine::model::ModelLayout::resolve(folder) {
        Ok(l) if l.anchor_json.is_some() => l,
        _ => return Vec::new(),
    };
    PARAMS
        .iter()
        .filter_map(|p| {
            let value = match (p.model_default?, part) {
                (ModelDefault::Body(f), DefaultsPart::Body) => f(&layout.defaults),
                (ModelDefault::Face(f), DefaultsPart::Face) => f(&layout.face_defaults),
                _ => return None,
            };
            Some((p.name, value))
        })
        .collect()
}

/// The five face points at `time` (canonical coordinates, [`FACE_POINTS`] order) when
/// `faceUsePoints` is on there; `None` when it is off or a point cannot be read.
pub fn face_points_at(params: ParamSet, time: f64) -> Option<[[f64; 2]; 5]> {
    let on = params
        .param(FACE_USE_POINTS)
        .and_then(|p| p.bool_at(time))
        .unwrap_or(false);
    if !on {
        return None;
    }
    let mut points = [[0.0; 2]; 5];
    for (p, name) in points.iter_mut().zip(FACE_POINTS) {
        match params.param(name).and_then(|q| q.double2d_at(time)) {
            Ok((x, y)) => *p = [x, y],
            Err(e) => {
                fallback(name, &e, ());
                return None;
            }
        }
    }
    Some(points)
}

/// The `region` framing's square at `time` (`regionCenter`, `regionSize`); a value the host
/// cannot give is left to the plate (its centre, its shorter side), with a warning logged once.
pub fn region_at(params: ParamSet, time: f64) -> RegionParams {
    let center = match params
        .param(REGION_CENTER)
        .and_then(|p| p.double2d_at(time))
    {
        // (0.5, 0.5) canonical is the table's normalised default as a host without OFX 1.2
        // default coordinate systems leaves it (half a pixel from the corner, no place for a
        // region): it means the plate's centre there, as the default does where normalised
        // defaults are honoured.
        Ok((x, y)) if (x, y) == (0.5, 0.5) => None,
        Ok((x, y)) if x.is_finite() && y.is_finite() => Some([x, y]),
        Ok(_) => None,
        Err(e) => fallback(REGION_CENTER, &e, None),
    };
    let size = params
        .param(REGION_SIZE)
        .and_then(|p| p.double_at(time))
        .unwrap_or_else(|e| fallback(REGION_SIZE, &e, default_double(REGION_SIZE)));
    RegionParams { center, size }
}

/// The table entry of parameter `name`.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|p| p.name == name)
}

/// The table default of an int, bool or choice parameter.
fn default_int(name: &str) -> i32 {
    match spec(name).map(|p| p.kind) {
        Some(Kind::Int { default, .. }) => default,
        Some(Kind::Choice { default, .. }) => default,
        Some(Kind::Bool { default }) => default as i32,
        _ => 0,
    }
}

/// The table default of a number parameter, as the value the host gives it.
pub fn table_default(spec: &ParamSpec) -> ParamValue {
    match spec.kind {
        Kind::Double { default, .. } => ParamValue::Double(default),
        _ => ParamValue::Int(default_int(spec.name)),
    }
}

/// The table default of a double parameter.
fn default_double(name: &str) -> f64 {
    match spec(name).map(|p| p.kind) {
        Some(Kind::Double { default, .. }) => default,
        _ => 0.0,
    }
}

/// Log (once per parameter) that the host could not give `name`, and use `default`.
fn fallback<T: std::fmt::Debug>(name: &str, e: &anchor_ofx::Error, default: T) -> T {
    static WARNED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    let mut warned = WARNED.lock();
    if !warned.iter().any(|w| w == name) {
        warned.push(name.to_owned());
        log::warn!("the host cannot give parameter {name} ({e}); using its default {default:?}");
    }
    default
}

/// The shared cache folder: the parameter, else [`ENV_SHARED_CACHE`], else none.
pub fn resolve_shared_cache(param: &str, env: Option<&str>) -> Option<PathBuf> {
    [Some(param), env]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The model folder to use: the parameter if set, else `env` (the value of
/// `MAKE_YOUR_ANCHOR_MODEL`), else `None` (pass-through). A named folder that is not an existing
/// directory is an error.
pub fn resolve_model_folder(
    param: &str,
    env: Option<&str>,
) -> Result<Option<PathBuf>, EffectError> {
    let param = param.trim();
    let (chosen, from) = if !param.is_empty() {
        (param, MODEL_FOLDER)
    } else {
        match env.map(str::trim) {
            Some(e) if !e.is_empty() => (e, ENV_MODEL_FOLDER),
            _ => return Ok(None),
        }
    };
    let path = PathBuf::from(chosen);
    if path.is_dir() {
        log::debug!("model folder {} (from {from})", path.display());
        Ok(Some(path))
    } else {
        log::debug!(
            "model folder {} (from {from}) is not a directory",
            path.display()
        );
        Err(EffectError::ModelFolderMissing { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_frozen_script_names_and_defaults() {
        let names: Vec<&str> = PARAMS.iter().map(|p| p.name).collect();
        let mut expected = vec![
            "modelFolder",
            "seed",
            "steps",
            "guidance",
            "controlScale",
            "controlResiduals",
            "window",
            "overlap",
            "fusion",
            "tail",
            "resolution",
            "faceEnhance",
            "faceModelFolder",
            "faceUsePoints",
            "faceLeftEye",
            "faceRightEye",
            "faceNose",
            "faceMouthLeft",
            "faceMouthRight",
            "faceLandmarksFile",
            "faceParser",
            "faceSmoothing",
            "faceTemporal",
            "faceWindow",
            "faceOverlap",
            "faceCrop",
            "faceSize",
            "faceSteps",
            "faceGuidance",
            "faceControlScale",
            "faceSeed",
            "faceErode",
            "faceBlur",
            "faceMeshJpeg",
            "device",
            "precision",
            "cacheMiB",
            "preview",
            "sharedCacheFolder",
            "colorspace",
            "framing",
            "regionCenter",
            "regionSize",
            "outputAlpha",
            "matteFeather",
        ];
        let mut sorted = names.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        let kind = |n: &str| PARAMS.iter().find(|p| p.name == n).map(|p| p.kind);
        assert!(matches!(kind(SEED), Some(Kind::Int { default: 42, .. })));
        assert!(matches!(kind(STEPS), Some(Kind::Int { default: 20, .. })));
        assert!(matches!(kind(WINDOW), Some(Kind::Int { default: 16, .. })));
        assert!(matches!(kind(OVERLAP), Some(Kind::Int { default: 4, .. })));
        assert!(matches!(
            kind(RESOLUTION),
            Some(Kind::Int { default: 512, .. })
        ));
        assert!(matches!(
            kind(CACHE_MIB),
            Some(Kind::Int { default: 4096, .. })
        ));
        assert_eq!(
            kind(GUIDANCE).map(|k| matches!(k, Kind::Double { default, .. } if default == 7.5)),
            Some(true)
        );
        assert_eq!(
            kind(CONTROL_SCALE)
                .map(|k| matches!(k, Kind::Double { default, .. } if default == 2.0)),
            Some(true)
        );
        assert_eq!(kind(FACE_ENHANCE), Some(Kind::Bool { default: false }));
        assert_eq!(kind(MODEL_FOLDER), Some(Kind::Directory));
        assert_eq!(kind(FACE_MODEL_FOLDER), Some(Kind::Directory));
        assert_eq!(kind(FACE_LANDMARKS_FILE), Some(Kind::File));
        for name in FACE_POINTS {
            assert_eq!(kind(name), Some(Kind::Point), "{name}");
        }
        assert_eq!(kind(FACE_USE_POINTS), Some(Kind::Bool { default: false }));
        assert_eq!(
            kind(FACE_SMOOTHING)
                .map(|k| matches!(k, Kind::Double { default, .. } if default == 0.0)),
            Some(true),
            "smoothing is off by default (parity with the reference)"
        );
        let animated: Vec<&str> = PARAMS
            .iter()
            .filter(|p| p.animates())
            .map(|p| p.name)
            .collect();
        assert_eq!(
            animated,
            [
                "regionCenter",
                "regionSize",
                "faceUsePoints",
                "faceLeftEye",
                "faceRightEye",
                "faceNose",
                "faceMouthLeft",
                "faceMouthRight"
            ]
        );
        // Issue 16: a compositor's default keeps the plate's shape, and the matte is opt-in.
        assert_eq!(FRAMING_OPTIONS, &["squash", "fit", "region"]);
        assert_eq!(
            kind(FRAMING),
            Some(Kind::Choice {
                options: FRAMING_OPTIONS,
                default: 1
            })
        );
        assert_eq!(OUTPUT_ALPHA_OPTIONS, &["opaque", "silhouette"]);
        assert_eq!(
            kind(OUTPUT_ALPHA),
            Some(Kind::Choice {
                options: OUTPUT_ALPHA_OPTIONS,
                default: 0
            })
        );
        assert!(matches!(
            kind(MATTE_FEATHER),
            Some(Kind::Int { default: 2, .. })
        ));
        assert_eq!(kind(REGION_CENTER), Some(Kind::CentredPoint));
        assert_eq!(FUSION_OPTIONS, &["flat", "pyramid", "overlap-linear"]);
        assert_eq!(TAIL_OPTIONS, &["paper", "full"]);
        assert_eq!(PRECISION_OPTIONS, &["f32", "f16", "bf16"]);
        assert_eq!(DEVICE_OPTIONS.len(), 6);
    }

    #[test]
    fn every_entry_is_well_formed() {
        for p in PARAMS {
            assert!(p.hint.ends_with('.'), "{}: hint is a full sentence", p.name);
            assert!(p
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase()));
            assert!(
                p.name.chars().all(|c| c.is_ascii_alphanumeric()),
                "{}",
                p.name
            );
            match p.kind {
                Kind::Int {
                    default,
                    min,
                    max,
                    display_min,
                    display_max,
                } => {
                    assert!(min <= default && default <= max, "{}", p.name);
                    assert!(min <= display_min && display_max <= max, "{}", p.name);
                }
                Kind::Double {
                    default,
                    min,
                    max,
                    display_min,
                    display_max,
                } => {
                    assert!(min <= default && default <= max, "{}", p.name);
                    assert!(min <= display_min && display_max <= max, "{}", p.name);
                }
                Kind::Choice { options, default } => {
                    assert!((default as usize) < options.len(), "{}", p.name);
                }
                _ => {}
            }
        }
        for page in PAGES {
            assert!(
                PARAMS.iter().any(|p| p.page == *page),
                "{} is not empty",
                page.page
            );
        }
    }

    #[test]
    fn unreadable_values_take_the_table_defaults() {
        assert_eq!(default_int(STEPS), 20);
        assert_eq!(default_int(RESOLUTION), 512);
        assert_eq!(default_int(FUSION), 0);
        assert_eq!(default_int(FACE_ENHANCE), 0);
        assert_eq!(default_double(GUIDANCE), 7.5);
        assert_eq!(default_double(CONTROL_SCALE), 2.0);
    }

    #[test]
    fn every_entry_stores_a_value_of_its_kind() {
        for p in PARAMS {
            let ok = match p.store {
                Store::Number(_) => matches!(
                    p.kind,
                    Kind::Int { .. }
                        | Kind::Double { .. }
                        | Kind::Bool { .. }
                        | Kind::Choice { .. }
                ),
                Store::Text(_) => matches!(p.kind, Kind::Directory | Kind::File),
                Store::FacePoints => p.kind == Kind::Point || p.name == FACE_USE_POINTS,
                Store::Region => p.kind == Kind::CentredPoint || p.name == REGION_SIZE,
            };
            assert!(ok, "{}: {:?} does not hold a {:?}", p.name, p.store, p.kind);
            if p.model_default.is_some() {
                assert!(matches!(p.store, Store::Number(_)), "{}", p.name);
            }
        }
    }

    /// Every `Settings` value of the table defaults, as the stores write them.
    fn table_settings() -> Settings {
        let mut s = Settings::default();
        for p in PARAMS {
            match p.store {
                Store::Number(store) => match p.kind {
                    Kind::Double { default, .. } => store(&mut s, ParamValue::Double(default)),
                    _ => store(&mut s, ParamValue::Int(default_int(p.name))),
                },
                Store::Text(store) => store(&mut s, format!("{} text", p.name)),
                Store::FacePoints | Store::Region => {}
            }
        }
        s
    }

    #[test]
    fn stores_fill_every_field() {
        let s = table_settings();
        let expected = Settings {
            model_folder: "modelFolder text".into(),
            seed: 42,
            steps: 20,
            guidance: 7.5,
            control_scale: 2.0,
            control_residuals: ControlResiduals::Original,
            window: 16,
            overlap: 4,
            fusion: Fusion::Flat,
            tail: Tail::Paper,
            resolution: 512,
            face_enhance: false,
            face_model_folder: "faceModelFolder text".into(),
            face_points: None,
            face_landmarks_file: "faceLandmarksFile text".into(),
            face_parser: "faceParser text".into(),
            face_smoothing: 0.0,
            face_temporal: false,
            face_window: 16,
            face_overlap: 4,
            face_crop: 512,
            face_size: 256,
            face_steps: 20,
            face_guidance: 3.5,
            face_control_scale: 1.0,
            face_seed: 999,
            face_erode: 40,
            face_blur: 41,
            face_mesh_jpeg: true,
            device: Device::Auto,
            precision: Precision::F32,
            cache_mib: 4096,
            shared_cache_folder: "sharedCacheFolder text".into(),
            preview: false,
            colour: ColourChoice::Auto,
            framing: Framing::Fit,
            region: RegionParams::default(),
            output_alpha: OutputAlpha::Opaque,
            matte_feather: 2,
        };
        assert_eq!(s, expected);
        // Each store writes its own field: a non-default value changes that field only.
        let mut one = table_settings();
        for (name, value) in [
            (CONTROL_RESIDUALS, ParamValue::Int(1)),
            (FACE_MESH_JPEG, ParamValue::Int(0)),
            (COLORSPACE, ParamValue::Int(2)),
            (DEVICE, ParamValue::Int(3)),
            (STEPS, ParamValue::Double(7.9)),
            (FRAMING, ParamValue::Int(2)),
            (OUTPUT_ALPHA, ParamValue::Int(1)),
            (MATTE_FEATHER, ParamValue::Int(5)),
        ] {
            if let Some(Store::Number(store)) = spec(name).map(|p| p.store) {
                store(&mut one, value);
            }
        }
        let mut want = expected;
        want.control_residuals = ControlResiduals::Standard;
        want.face_mesh_jpeg = false;
        want.colour = ColourChoice::Srgb;
        want.device = Device::Cuda(1);
        want.steps = 7;
        want.framing = Framing::Region;
        want.output_alpha = OutputAlpha::Silhouette;
        want.matte_feather = 5;
        assert_eq!(one, want);
    }

    fn tiny_anchor() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources/models/tiny-anchor")
    }

    #[test]
    fn model_defaults_come_from_anchor_json() {
        let folder = tiny_anchor();
        if !folder.join("anchor.json").is_file() {
            println!("skipped: no {}", folder.display());
            return;
        }
        let sorted = |mut v: Vec<(&'static str, ParamValue)>| {
            v.sort_by_key(|(n, _)| *n);
            v
        };
        assert_eq!(
            sorted(model_default_values(&folder, DefaultsPart::Body)),
            sorted(vec![
                (STEPS, ParamValue::Int(20)),
                (GUIDANCE, ParamValue::Double(3.5)),
                (CONTROL_SCALE, ParamValue::Double(1.5)),
                (CONTROL_RESIDUALS, ParamValue::Int(0)),
                (WINDOW, ParamValue::Int(16)),
                (OVERLAP, ParamValue::Int(4)),
                (RESOLUTION, ParamValue::Int(64)),
                (SEED, ParamValue::Int(42)),
            ])
        );
        assert_eq!(
            sorted(model_default_values(&folder, DefaultsPart::Face)),
            sorted(vec![
                (FACE_CROP, ParamValue::Int(512)),
                (FACE_SIZE, ParamValue::Int(32)),
                (FACE_STEPS, ParamValue::Int(20)),
                (FACE_GUIDANCE, ParamValue::Double(3.5)),
                (FACE_CONTROL_SCALE, ParamValue::Double(1.0)),
                (FACE_SEED, ParamValue::Int(999)),
                (FACE_ERODE, ParamValue::Int(6)),
                (FACE_BLUR, ParamValue::Int(11)),
                (FACE_MESH_JPEG, ParamValue::Int(1)),
            ])
        );
        assert!(model_default_values(Path::new(""), DefaultsPart::Body).is_empty());

        // Values the host could not give take the model's defaults; the others stay.
        let mut s = table_settings();
        s.model_folder = folder.display().to_string();
        s.face_model_folder = folder.display().to_string();
        s.apply_model_defaults(&[GUIDANCE, RESOLUTION, FACE_BLUR, FUSION]);
        let mut want = table_settings();
        want.model_folder = s.model_folder.clone();
        want.face_model_folder = s.face_model_folder.clone();
        want.guidance = 3.5;
        want.resolution = 64;
        want.face_blur = 11;
        assert_eq!(s, want);
    }

    #[test]
    fn choices_map_and_fall_back() {
        assert_eq!(Fusion::from_index(2), Fusion::OverlapLinear);
        assert_eq!(Fusion::from_index(9), Fusion::Flat);
        assert_eq!(Tail::from_index(1), Tail::Full);
        assert_eq!(Device::from_index(0), Device::Auto);
        assert_eq!(Device::from_index(1), Device::Cpu);
        assert_eq!(Device::from_index(5), Device::Cuda(3));
        assert_eq!(Device::from_index(-1), Device::Auto);
        assert_eq!(Precision::from_index(2), Precision::Bf16);
        assert_eq!(colour_from_index(0), ColourChoice::Auto);
        assert_eq!(colour_from_index(1), ColourChoice::Linear);
        assert_eq!(colour_from_index(2), ColourChoice::Srgb);
        assert_eq!(COLORSPACE_OPTIONS, &["auto", "linear", "sRGB"]);
        assert_eq!(Framing::from_index(0), Framing::Squash);
        assert_eq!(Framing::from_index(1), Framing::Fit);
        assert_eq!(Framing::from_index(2), Framing::Region);
        assert_eq!(Framing::from_index(7), Framing::Fit, "the default");
        assert_eq!(OutputAlpha::from_index(1), OutputAlpha::Silhouette);
        assert_eq!(OutputAlpha::from_index(-1), OutputAlpha::Opaque);
    }

    #[test]
    fn shared_cache_folder_resolution() {
        assert_eq!(resolve_shared_cache("", None), None);
        assert_eq!(resolve_shared_cache(" ", Some("")), None);
        assert_eq!(
            resolve_shared_cache("", Some("/farm/cache")),
            Some(PathBuf::from("/farm/cache"))
        );
        assert_eq!(
            resolve_shared_cache(" /job/cache ", Some("/farm/cache")),
            Some(PathBuf::from("/job/cache"))
        );
    }

    #[test]
    fn model_folder_resolution() {
        let dir = std::env::temp_dir();
        let dir_s = dir.to_str().unwrap_or_default().to_owned();
        assert_eq!(resolve_model_folder("", None).ok(), Some(None));
        assert_eq!(resolve_model_folder("  ", Some("")).ok(), Some(None));
        assert_eq!(
            resolve_model_folder(&dir_s, None).ok(),
            Some(Some(dir.clone()))
        );
        assert_eq!(
            resolve_model_folder("", Some(&dir_s)).ok(),
            Some(Some(dir.clone()))
        );
        let missing = "/no/such/make-your-anchor-model";
        let err = resolve_model_folder("", Some(missing))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("Model folder /no/such/make-your-anchor-model does not exist: set modelFolder to a Make-Your-Anchor model folder")
        );
        // The parameter wins over the environment.
        let err = resolve_model_folder(missing, Some(&dir_s))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("Model folder /no/such/")));
    }
}
