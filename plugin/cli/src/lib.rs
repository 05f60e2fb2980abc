//! The `anchor` command line's own code: the offline tools (`synth`, `eval`), the clap front
//! end of the trainers, farm-style frame ranges and numbering (`frames`), and the stderr logger
//! (`logger`). The engine (`anchor_engine`) does the work; the binary is `src/main.rs`.
pub mod frames;
pub mod logger;
pub mod tools;
pub mod train_args;
