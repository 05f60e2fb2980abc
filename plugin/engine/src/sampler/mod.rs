//! Weight-free sampling math: schedulers.
pub mod ddim;
