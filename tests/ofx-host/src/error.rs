//! The host's error type: every way a run can fail, each with a message a pipeline user can act on.

use thiserror::Error;

/// Why a run of the host failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// The bundle could not be opened or has no usable entry points.
    #[error("cannot load bundle {path}: {reason}")]
    Bundle {
        /// Bundle or binary path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The requested plugin is not in the bundle.
    #[error("plugin {wanted:?} not found; the bundle contains: {available}")]
    PluginNotFound {
        /// Identifier asked for.
        wanted: String,
        /// Identifiers present.
        available: String,
    },
    /// An action returned a failure status.
    #[error("{action} failed with {status}{detail}")]
    ActionFailed {
        /// Action name, e.g. `OfxImageEffectActionRender`.
        action: String,
        /// Status name, e.g. `kOfxStatFailed`.
        status: String,
        /// Frame and the plugin's last error message, if any.
        detail: String,
    },
    /// The plugin broke an OFX rule the host checks.
    #[error("plugin violated the OFX API: {0}")]
    Violation(String),
    /// The host aborted the render on request (`--abort-after`).
    #[error("render aborted by the host after {completed} frame(s); {detail}")]
    Aborted {
        /// Frames completed before the abort.
        completed: usize,
        /// What the plugin answered for the frame(s) in flight.
        detail: String,
    },
    /// Input or output image sequence problem.
    #[error("image sequence: {0}")]
    Sequence(String),
    /// Image allocation or conversion problem.
    #[error("image: {0}")]
    Image(String),
    /// A `--param` could not be applied.
    #[error("parameter: {0}")]
    Param(String),
    /// Inconsistent options.
    #[error("{0}")]
    Usage(String),
}
