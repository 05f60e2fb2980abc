//! The temporal engine: window planning, the content-keyed memo (per process, and shared by the
//! processes of a render farm through a folder), seeded noise, and batch-overlapped denoising
//! served one frame at a time.
pub mod cache;
pub mod denoiser;
pub mod noise;
pub mod shared;
pub mod windows;

#[cfg(test)]
mod tests;

pub use cache::{Cache, CacheStats, Entry, Key, KeyHasher};
pub use denoiser::{
    ControlFrames, Counters, NoProgress, Progress, SamplingParams, StepScheduler, TemporalDenoiser,
    WindowNetworks,
};
pub use shared::{
    Claim, EntryKind, LeaseState, PruneReport, SharedConfig, SharedStats, SharedStore, StoreInfo,
};
pub use windows::{Fusion, Tail, WindowPlan};
