//! Offline tools behind the `anchor` CLI that need no network weights: `synth` (a synthetic
//! presenter rendered as an SMPL-X-like mesh and as a "person", issue 6) and `eval` (PSNR, SSIM,
//! silhouette IoU and seam flicker of rendered frames against ground truth).
//!
//! Plain Rust over `image`; no OFX types and no candle tensors.
use std::path::{Path, PathBuf};

pub mod assemble;
pub mod cache;
pub mod eval;
pub mod synth;

/// Errors of the offline tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The codec error.
        source: image::ImageError,
    },
    /// Arguments or inputs that the tool cannot use; the message names the bad value.
    #[error("{0}")]
    Input(String),
}

/// Result of the offline tools.
pub type Result<T> = std::result::Result<T, ToolsError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ToolsError + '_ {
    move |source| ToolsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Turns a tool's result into the CLI's exit status, printing the error on stderr.
pub fn exit_code(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anchor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
