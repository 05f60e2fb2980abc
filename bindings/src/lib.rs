//! Safe, typed wrappers over the OpenFX 1.5.1 C API (`openfx::sys`), for the plugin side.
//!
//! This crate knows OFX and nothing about diffusion. It owns:
//! - [`Status`] and [`Error`]: OFX status codes as a Rust enum, and the crate's error type;
//! - [`host`](mod@host): the process-global host handle set by `OfxSetHost`/`setHost`, and the suites fetched
//!   from it;
//! - [`PropertySet`]: typed, N-dimensional property access;
//! - [`param`]: parameter definition (int, double, bool, choice, string, group, page) and values;
//! - [`ImageEffect`], [`Clip`], [`Image`]: the image-effect suite, clips and images;
//! - [`pixels`]: a pixel view over host memory (any depth/layout, negative rowBytes, offset bounds)
//!   with conversions to and from plain RGBA `f32`;
//! - [`message`], [`progress`], [`memory`], [`multithread`]: the remaining suites.
//!
//! Every call goes through the global host, so nothing here works before `set_host` ran; calls
//! then fail with [`Error::NoHost`] rather than crash.
#![deny(missing_docs)]

pub mod effect;
pub mod error;
pub mod host;
pub mod memory;
pub mod message;
pub mod multithread;
pub mod names;
pub mod param;
pub mod pixels;
pub mod progress;
pub mod property;

pub use effect::{Clip, Image, ImageEffect, ImageMemory};
pub use error::{Error, Result, Status};
pub use host::{host, set_host, Host};
pub use memory::HostMemory;
pub use message::MessageType;
pub use param::{Param, ParamDef, ParamSet, ParamType, StringMode};
pub use pixels::{BitDepth, Components, PixelLayout, PixelView, PixelViewMut, Rect, RgbaBuffer};
pub use progress::Progress;
pub use property::PropertySet;

/// The raw bindings this crate is built on (`openfx` 0.6.0, OFX 1.5.1).
pub use openfx::sys;
