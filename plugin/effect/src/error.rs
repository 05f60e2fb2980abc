//! Errors of the effect layer, with the exact texts shown to people through the message suite.
//!
//! Every text says what is wrong and what to do about it. The host test suite asserts these
//! texts: change them together with `tests/ofx-host`.
use anchor_ofx::{MessageType, Status};
use std::path::PathBuf;

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EffectError {
    /// The Source clip has nothing connected.
    #[error("The Source clip is not connected: connect the mesh-render track to the Source input of Make Your Anchor")]
    SourceNotConnected,
    /// `clipGetImage` on Source gave nothing.
    #[error("The host returned no Source image at frame {time}: check that the mesh-render track has a frame there")]
    NoSourceImage {
        /// Frame asked for.
        time: f64,
    },
    /// `clipGetImage` on Output gave nothing.
    #[error("The host returned no Output image at frame {time}: the host could not provide an image to render into")]
    NoOutputImage {
        /// Frame asked for.
        time: f64,
    },
    /// `modelFolder` (or `MAKE_YOUR_ANCHOR_MODEL`) names something that is not a directory.
    #[error("Model folder {} does not exist: set modelFolder to a Make-Your-Anchor model folder", path.display())]
    ModelFolderMissing {
        /// The folder named.
        path: PathBuf,
    },
    /// An image with no pixels.
    #[error("The {clip} image at frame {time} is empty ({width}x{height} pixels): give Make Your Anchor a {clip} clip with a non-empty image")]
    EmptyImage {
        /// Clip name.
        clip: &'static str,
        /// Frame.
        time: f64,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// A depth or components value we do not read or write.
    #[error("The {clip} image at frame {time} has an unsupported pixel format (depth {depth}, components {components}): use Byte, Short, Half or Float images with RGBA, RGB or Alpha components")]
    UnsupportedPixels {
        /// Clip name.
        clip: &'static str,
        /// Frame.
        time: f64,
        /// Depth as the host named it.
        depth: String,
        /// Components as the host named them.
        components: String,
    },
    /// Image memory whose geometry is inconsistent (e.g. rowBytes shorter than a row).
    #[error("The {clip} image at frame {time} has an invalid memory layout ({detail}): this is a host bug, please report it")]
    BadImage {
        /// Clip name.
        clip: &'static str,
        /// Frame.
        time: f64,
        /// What is wrong.
        detail: String,
    },
    /// The host's `abort()` returned true.
    #[error("Rendering frame {time} was aborted by the host")]
    Aborted {
        /// Frame.
        time: f64,
    },
    /// The model folder exists but does not hold a model we can load.
    #[error("The model folder {} is not a usable Make-Your-Anchor model ({detail}): choose a folder holding unet/, controlnet/, vae/, scheduler/, text_encoder/ and image_encoder/ (check it with `anchor inspect --model`)", path.display())]
    IncompatibleModel {
        /// The folder.
        path: PathBuf,
        /// What the loader found wrong.
        detail: String,
    },
    /// `faceEnhance` is on but `faceModelFolder` is empty or not a directory.
    #[error("{}", face_folder_text(path.as_deref()))]
    FaceModelFolderMissing {
        /// The folder named, when one is.
        path: Option<PathBuf>,
    },
    /// The face model folder exists but does not hold a face (head inpainting) model.
    #[error("The face model folder {} is not a usable Make-Your-Anchor face model ({detail}): choose a folder holding a 9-channel inpainting unet/ (or a head/ subfolder with unet/ and controlnet/), controlnet/, vae/, scheduler/, text_encoder/ and image_encoder/, or turn faceEnhance off", path.display())]
    IncompatibleFaceModel {
        /// The folder.
        path: PathBuf,
        /// What the loader found wrong.
        detail: String,
    },
    /// `faceLandmarksFile` cannot be read or parsed.
    #[error("The face landmarks file {} cannot be used ({detail}): give faceLandmarksFile a JSON object mapping frames (000012 or 12) to five [x, y] points or null, or clear it", path.display())]
    FaceLandmarks {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// No appearance image: no Appearance clip and no default photo in the model folder.
    #[error("Make Your Anchor has no appearance image at frame {time} ({detail}): connect a reference still to the Appearance input, or put the person's photo in the model folder as appearance.png")]
    NoAppearance {
        /// Frame.
        time: f64,
        /// The loader's message.
        detail: String,
    },
    /// The device ran out of memory, or a window batch's estimate exceeds the memory limit
    /// (`MAKE_YOUR_ANCHOR_MEMORY_MIB`).
    #[error("Out of memory while rendering frame {time} ({detail}): lower resolution (the working resolution) or window (frames per window), choose f16 precision, or lower cacheMiB")]
    OutOfMemory {
        /// Frame.
        time: f64,
        /// What was needed and available, or the allocator's message.
        detail: String,
    },
    /// Host-given bounds (an image, the render window, a region of definition) too large to
    /// hold, refused before allocating: a failed allocation aborts the host, and no
    /// `catch_unwind` can turn that into a message. The caps are [`crate::render::MAX_IMAGE_SIDE`]
    /// and [`crate::render::MAX_IMAGE_BYTES`].
    #[error("The {clip} {what} at frame {time} is {width}x{height} pixels, which would take {} of memory: Make Your Anchor holds images of at most {} pixels per side and {} per buffer. Render a smaller region, or lower the project or clip resolution", human_bytes(*bytes), crate::render::MAX_IMAGE_SIDE, human_bytes(crate::render::MAX_IMAGE_BYTES as u128))]
    ImageTooLarge {
        /// Clip name.
        clip: &'static str,
        /// Which bounds: `image`, `render window` or `region of definition`.
        what: &'static str,
        /// Frame.
        time: f64,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Bytes the buffer would take (saturating; wider than `usize` so it cannot overflow).
        bytes: u128,
    },
    /// A render time that is not a frame of the Source clip's range.
    #[error("Frame {time} is outside the Source clip's frame range {first}-{last}: Make Your Anchor renders only frames of the mesh-render track")]
    FrameOutsideClip {
        /// Frame asked for.
        time: f64,
        /// First frame of the range.
        first: f64,
        /// Last frame of the range.
        last: f64,
    },
    /// Any other failure inside the engine (bad settings, device, pixels).
    #[error("Make Your Anchor could not render frame {time}: {detail}")]
    Engine {
        /// Frame.
        time: f64,
        /// The engine's message.
        detail: String,
    },
    /// DescribeInContext for a context we never declared.
    #[error(
        "Make Your Anchor does not support the {0} context: use it as a Filter or General effect"
    )]
    UnsupportedContext(String),
    /// A host call failed.
    #[error("An OpenFX host call failed: {0}")]
    Ofx(#[from] anchor_ofx::Error),
    /// A host call failed during an action: [`EffectError::Ofx`] with the action named, so the
    /// message says where (e.g. `propGetDouble(OfxImageEffectPropFrameRange)` in Render).
    #[error("An OpenFX host call failed in {action}: {source}")]
    HostCall {
        /// The action, e.g. `Render`.
        action: String,
        /// What the host call returned.
        source: anchor_ofx::Error,
    },
    /// A panic was caught at the ABI boundary.
    #[error("Internal error in {action}: {message}. Please report this with the log file (set MAKE_YOUR_ANCHOR_LOG)")]
    Panic {
        /// The action running.
        action: String,
        /// The panic payload.
        message: String,
    },
}

/// `bytes` for people: GiB with one decimal from 1 GiB up, else MiB rounded up, else bytes.
fn human_bytes(bytes: u128) -> String {
    const MIB: u128 = 1 << 20;
    const GIB: u128 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{} MiB", bytes.div_ceil(MIB))
    } else {
        format!("{bytes} bytes")
    }
}

/// The text of [`EffectError::FaceModelFolderMissing`].
fn face_folder_text(path: Option<&std::path::Path>) -> String {
    match path {
        None => "faceEnhance is on but faceModelFolder is empty: set faceModelFolder to a Make-Your-Anchor face model folder, or turn faceEnhance off".into(),
        Some(p) => format!(
            "Face model folder {} does not exist: set faceModelFolder to a Make-Your-Anchor face model folder, or turn faceEnhance off",
            p.display()
        ),
    }
}

impl EffectError {
    /// This error as reported by `action`: a bare host-call failure gets the action's name.
    pub fn in_action(self, action: &str) -> Self {
        match self {
            Self::Ofx(source) => Self::HostCall {
                action: action.to_owned(),
                source,
            },
            other => other,
        }
    }

    /// The status the action returns.
    pub fn status(&self) -> Status {
        match self {
            Self::Ofx(e) | Self::HostCall { source: e, .. } => e.status(),
            Self::UnsupportedContext(_) => Status::ErrUnsupported,
            Self::OutOfMemory { .. } | Self::ImageTooLarge { .. } => Status::ErrMemory,
            _ => Status::Failed,
        }
    }

    /// How the message is posted: an abort is the host's (or user's) own request, so it is only
    /// logged by the host rather than shown as an error dialog.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::Aborted { .. } => MessageType::Log,
            _ => MessageType::Error,
        }
    }

    /// Message id passed to the message suite, stable per kind of error.
    pub fn message_id(&self) -> &'static str {
        match self {
            Self::SourceNotConnected => "org.makeyouranchor.Anchor.sourceNotConnected",
            Self::NoSourceImage { .. } => "org.makeyouranchor.Anchor.noSourceImage",
            Self::NoOutputImage { .. } => "org.makeyouranchor.Anchor.noOutputImage",
            Self::ModelFolderMissing { .. } => "org.makeyouranchor.Anchor.modelFolderMissing",
            Self::EmptyImage { .. } => "org.makeyouranchor.Anchor.emptyImage",
            Self::UnsupportedPixels { .. } => "org.makeyouranchor.Anchor.unsupportedPixels",
            Self::BadImage { .. } => "org.makeyouranchor.Anchor.badImage",
            Self::Aborted { .. } => "org.makeyouranchor.Anchor.aborted",
            Self::UnsupportedContext(_) => "org.makeyouranchor.Anchor.unsupportedContext",
            Self::IncompatibleModel { .. } => "org.makeyouranchor.Anchor.incompatibleModel",
            Self::NoAppearance { .. } => "org.makeyouranchor.Anchor.noAppearance",
            Self::FaceModelFolderMissing { .. } => {
                "org.makeyouranchor.Anchor.faceModelFolderMissing"
            }
            Self::IncompatibleFaceModel { .. } => "org.makeyouranchor.Anchor.incompatibleFaceModel",
            Self::FaceLandmarks { .. } => "org.makeyouranchor.Anchor.faceLandmarks",
            Self::OutOfMemory { .. } => "org.makeyouranchor.Anchor.outOfMemory",
            Self::ImageTooLarge { .. } => "org.makeyouranchor.Anchor.imageTooLarge",
            Self::FrameOutsideClip { .. } => "org.makeyouranchor.Anchor.frameOutsideClip",
            Self::Engine { .. } => "org.makeyouranchor.Anchor.engine",
            Self::Ofx(_) | Self::HostCall { .. } => "org.makeyouranchor.Anchor.hostCall",
            Self::Panic { .. } => "org.makeyouranchor.Anchor.internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_exact() {
        assert_eq!(
            EffectError::SourceNotConnected.to_string(),
            "The Source clip is not connected: connect the mesh-render track to the Source input of Make Your Anchor"
        );
        assert_eq!(
            EffectError::NoSourceImage { time: 3.0 }.to_string(),
            "The host returned no Source image at frame 3: check that the mesh-render track has a frame there"
        );
        assert_eq!(
            EffectError::EmptyImage { clip: "Source", time: 0.0, width: 0, height: 4 }.to_string(),
            "The Source image at frame 0 is empty (0x4 pixels): give Make Your Anchor a Source clip with a non-empty image"
        );
        assert_eq!(
            EffectError::UnsupportedPixels {
                clip: "Source",
                time: 1.5,
                depth: "OfxBitDepthNone".into(),
                components: "OfxImageComponentRGBA".into()
            }
            .to_string(),
            "The Source image at frame 1.5 has an unsupported pixel format (depth OfxBitDepthNone, components OfxImageComponentRGBA): use Byte, Short, Half or Float images with RGBA, RGB or Alpha components"
        );
        assert_eq!(
            EffectError::Aborted { time: 12.0 }.to_string(),
            "Rendering frame 12 was aborted by the host"
        );
        assert_eq!(
            EffectError::Aborted { time: 1.0 }.message_type(),
            MessageType::Log
        );
        assert_eq!(EffectError::SourceNotConnected.status(), Status::Failed);
        assert_eq!(
            EffectError::FaceModelFolderMissing { path: None }.to_string(),
            "faceEnhance is on but faceModelFolder is empty: set faceModelFolder to a Make-Your-Anchor face model folder, or turn faceEnhance off"
        );
        assert_eq!(
            EffectError::FaceModelFolderMissing { path: Some("/f".into()) }.to_string(),
            "Face model folder /f does not exist: set faceModelFolder to a Make-Your-Anchor face model folder, or turn faceEnhance off"
        );
        assert_eq!(
            EffectError::UnsupportedContext("x".into()).status(),
            Status::ErrUnsupported
        );
        let host_call = EffectError::Ofx(anchor_ofx::Error::Property {
            call: "propGetDouble",
            property: "OfxImageEffectPropFrameRange".into(),
            status: Status::ErrUnknown,
        })
        .in_action("Render");
        assert_eq!(
            host_call.to_string(),
            "An OpenFX host call failed in Render: propGetDouble(OfxImageEffectPropFrameRange) returned kOfxStatErrUnknown"
        );
        assert_eq!(host_call.status(), Status::Failed);
        assert_eq!(host_call.message_id(), "org.makeyouranchor.Anchor.hostCall");
    }
}
