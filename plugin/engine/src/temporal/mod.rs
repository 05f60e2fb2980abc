//! The temporal engine: window planning, the content-keyed memo, seeded noise, and
//! batch-overlapped denoising served one frame at a time.
pub mod cache;
pub mod denoiser;
pub mod noise;
pub mod windows;

#[cfg(test)]
mod tests;

pub use cache::{Cache, CacheStats, Entry, Key, KeyHasher};
pub use denoiser::{
    ControlFrames, Counters, NoProgress, Progress, SamplingParams, StepScheduler, TemporalDenoiser,
    WindowNetworks,
};
pub use windows::{Fusion, Tail, WindowPlan};
