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
    /// Inputs that the networks cannot take.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
