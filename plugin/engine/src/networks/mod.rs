//! The networks, one file per diffusers/transformers class, built from their `config.json`.
pub mod attention;
mod attention_cpu;
pub mod bisenet;
pub mod clip;
pub mod controlnet;
pub mod conv;
pub mod differentiable;
pub mod embeddings;
pub mod group_norm;
pub mod resnet;
pub mod transformer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
