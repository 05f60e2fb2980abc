//! The Make-Your-Anchor engine (CVPR 2024, arXiv 2403.16510): networks, sampler, weight loading,
//! temporal denoising, the face pass, the render services and (feature `train`) the trainers.
//!
//! No OFX types and no command line: the OpenFX effect (`make-your-anchor`) and the `anchor` CLI
//! (`anchor-cli`) are front ends over this crate, and dependencies point one way, front end →
//! engine → networks.
#![deny(missing_docs)]
pub mod device;
pub mod error;
pub mod face;
pub mod face_service;
pub mod framing;
pub mod job;
pub mod legacy_pth;
pub mod memory;
pub mod model;
pub mod networks;
pub mod pipeline;
pub mod profile;
pub mod registry;
pub mod resample;
pub mod sampler;
pub mod service;
pub mod temporal;
#[cfg(feature = "train")]
pub mod train;
pub mod weights;

pub use error::{EngineError, Result};
