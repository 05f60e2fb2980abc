//! The engine's error type: every variant names the file, key or value at fault.
//!
//! Out of memory, invalid input, I/O and broken internal invariants are separate variants, so
//! callers match on the kind of failure rather than on its text. Candle's errors enter the engine
//! through one conversion, `From<candle_core::Error>`, which sorts allocation failures into
//! [`EngineError::OutOfMemory`] and keeps every other candle error as [`EngineError::Candle`].
use std::path::PathBuf;

/// Errors raised while loading or running the networks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A tensor operation failed inside candle (for a reason other than memory).
    #[error(transparent)]
    Candle(candle_core::Error),
    /// An allocation failed: the device (CUDA) or its BLAS library had no memory left. Host
    /// allocations are not caught here: Rust aborts the process when one fails, so callers
    /// refuse oversized requests before allocating instead.
    #[error("out of memory: {detail}")]
    OutOfMemory {
        /// The allocator's message.
        detail: String,
    },
    /// A file or folder the model needs is absent.
    #[error("{path} does not exist: {hint}")]
    Missing {
        /// The absent path.
        path: PathBuf,
        /// What the user should do about it.
        hint: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A config file could not be parsed or holds invalid values.
    #[error("invalid config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, quoting the value found and the one expected.
        message: String,
    },
    /// A weights file is truncated, corrupt, or does not match the network.
    #[error("weights {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong (names the key).
        message: String,
    },
    /// The request was cancelled (progress cancel or host abort); the cache stays consistent.
    #[error("cancelled")]
    Cancelled,
    /// Inputs that the networks cannot take.
    #[error("invalid input: {0}")]
    Input(String),
    /// An internal invariant does not hold: a bug in the engine, not a problem with the inputs.
    #[error("internal error: {0}; this is a bug in Make-Your-Anchor, please report it")]
    Internal(String),
    /// Two components of a model disagree on a width, e.g. the appearance tokens and the UNet's
    /// cross-attention.
    #[error(
        "{what}: the appearance tokens are {tokens} wide but the {component} expects \
         cross_attention_dim = {cross_attention_dim}; use an image encoder whose hidden_size \
         equals the UNet's cross_attention_dim"
    )]
    WidthMismatch {
        /// Which check failed (names the folders involved).
        what: String,
        /// The appearance-token width (CLIP `hidden_size`).
        tokens: usize,
        /// The component whose width differs (`unet`, `controlnet`, `text_encoder`).
        component: String,
        /// That component's `cross_attention_dim` (or hidden size).
        cross_attention_dim: usize,
    },
    /// The requested device or dtype is unknown or unavailable in this build.
    #[error("device: {0}")]
    Device(String),
}

impl EngineError {
    /// A `Config` error for `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A `Weights` error for `path`.
    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Weights {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A `Missing` error for `path`.
    pub fn missing(path: impl Into<PathBuf>, hint: impl Into<String>) -> Self {
        Self::Missing {
            path: path.into(),
            hint: hint.into(),
        }
    }
}

impl From<candle_core::Error> for EngineError {
    /// The one place where candle's errors enter the engine: allocation failures become
    /// [`EngineError::OutOfMemory`], everything else [`EngineError::Candle`].
    fn from(e: candle_core::Error) -> Self {
        match allocation_failure(&e) {
            Some(detail) => Self::OutOfMemory { detail },
            None => Self::Candle(e),
        }
    }
}

/// The allocator's message when `e` is an allocation failure.
///
/// Candle has no typed out-of-memory error: CUDA's `CUDA_ERROR_OUT_OF_MEMORY` and cuBLAS's
/// `CUBLAS_STATUS_ALLOC_FAILED` arrive boxed in `Error::Cuda` (only downcastable with the `cuda`
/// feature, through cudarc's types), and a failed host allocation aborts before any error
/// exists. So this walks candle's wrappers (backtrace, context, path) to the error that carries
/// the backend's message, and reads that message: the only text inspection of the engine.
fn allocation_failure(e: &candle_core::Error) -> Option<String> {
    use candle_core::Error as E;
    let text = match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            return allocation_failure(inner)
        }
        E::Cuda(inner) => inner.to_string(),
        E::WrappedContext { wrapped, .. } => wrapped.to_string(),
        E::Wrapped(inner) => inner.to_string(),
        E::Msg(message) => message.clone(),
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    let oom = lower.contains("out of memory")
        || lower.contains("out_of_memory")
        || lower.contains("alloc_failed")
        || lower.contains("memory allocation failed");
    oom.then_some(text)
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_allocation_failures_become_out_of_memory() {
        let cuda = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        let e = EngineError::from(candle_core::Error::Msg(cuda.into()));
        assert!(
            matches!(&e, EngineError::OutOfMemory { detail } if detail == cuda),
            "{e:?}"
        );
        assert_eq!(e.to_string(), format!("out of memory: {cuda}"));
        // Wrapped in context and a path, as candle's loaders do.
        let wrapped = candle_core::Error::Msg("CUBLAS_STATUS_ALLOC_FAILED".into())
            .context("matmul")
            .with_path("/m/unet.safetensors");
        let e = EngineError::from(wrapped);
        assert!(
            matches!(&e, EngineError::OutOfMemory { detail } if detail == "CUBLAS_STATUS_ALLOC_FAILED"),
            "{e:?}"
        );
        // Other candle errors stay candle errors, with candle's text.
        let e = EngineError::from(candle_core::Error::Msg("window must be at least 1".into()));
        assert!(matches!(e, EngineError::Candle(_)), "{e:?}");
        assert_eq!(e.to_string(), "window must be at least 1");
        // A typed candle error is never read as text, whatever its fields say.
        let e = EngineError::from(candle_core::Error::CannotFindTensor {
            path: "out_of_memory.weight".into(),
        });
        assert!(matches!(e, EngineError::Candle(_)), "{e:?}");
    }

    #[test]
    fn internal_errors_say_they_are_bugs() {
        assert_eq!(
            EngineError::Internal("the UNet's up blocks need 3 skip states, 2 remain".into())
                .to_string(),
            "internal error: the UNet's up blocks need 3 skip states, 2 remain; this is a bug in \
             Make-Your-Anchor, please report it"
        );
    }
}
