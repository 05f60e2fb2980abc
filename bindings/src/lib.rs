//! Safe, typed wrappers over the OpenFX 1.5.1 C API (`openfx::sys`), for the plugin side.
//!
//! This crate knows OFX and nothing about diffusion.
pub use openfx::sys;
