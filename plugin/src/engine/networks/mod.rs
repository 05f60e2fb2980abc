//! The networks, one file per diffusers/transformers class, built from their `config.json`.
pub mod attention;
pub mod clip;
pub mod controlnet;
pub mod unet;
pub mod vae;
