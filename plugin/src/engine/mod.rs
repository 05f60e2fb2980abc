//! The diffusion engine: networks, sampler, weight loading. No OFX types, no host calls.
//!
//! Make-Your-Anchor (CVPR 2024, arXiv 2403.16510); semantics in `shared/spec/reference-pipeline.md`.
pub mod device;
pub mod error;
pub mod face;
pub mod legacy_pth;
pub mod memory;
pub mod model;
pub mod networks;
pub mod pipeline;
pub mod resample;
pub mod sampler;
pub mod service;
pub mod temporal;
pub mod train;
pub mod weights;

pub use error::{EngineError, Result};
