//! Make-Your-Anchor: an OpenFX effect (`effect`) driving a diffusion engine (`engine`).
//!
//! Dependencies point one way: effect (OFX layer) → engine → networks, never back.
pub mod effect;
pub mod engine;
pub mod tools;
