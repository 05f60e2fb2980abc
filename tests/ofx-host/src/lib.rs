//! `ofx_host`: a minimal OpenFX host, used as the Make-Your-Anchor test host and as the
//! `ofx-render` command-line renderer for pipelines.
//!
//! It loads any `.ofx.bundle` with `libloading` ([`bundle`]), implements the property,
//! image-effect, parameter, memory, multithread, message, progress and time-line suites
//! ([`props`], [`effect`], [`params`], [`suites`]), and drives a plugin through a frame range
//! from an image sequence to an image sequence ([`render`]), emulating the host behaviours of
//! `shared/spec/ofx-hosts.md` on request and checking the plugin's answers.
//!
//! **x86-64 Linux only**: the variadic suite functions are defined with fixed arities that
//! rely on the System V x86-64 calling convention (see [`params`]).

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("ofx-render defines C-variadic suite functions the x86-64 SysV way; it supports x86-64 Linux only");

pub mod bundle;
pub mod effect;
pub mod error;
pub mod messages;
pub mod params;
pub mod pixels;
pub mod props;
pub mod render;
pub mod sequence;
pub mod status;
pub mod suites;

pub use effect::SourceMode;
pub use error::HostError;
pub use messages::Message;
pub use pixels::{Depth, RowLayout};
pub use render::{list_params, render, Context, HostModel, Order, RenderOptions, RenderReport};
