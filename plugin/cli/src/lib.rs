//! The `anchor` command line's own code: the offline tools (`synth`, `eval`) and the clap front
//! end of the trainers. The engine (`anchor_engine`) does the work; the binary is `src/main.rs`.
pub mod tools;
pub mod train_args;
