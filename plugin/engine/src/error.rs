//! The engine's error type: every variant names the file, key or value at fault.
use std::path::PathBuf;

/// Errors raised while loading or running the networks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
