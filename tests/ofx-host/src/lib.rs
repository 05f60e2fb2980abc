//! A minimal OpenFX host that loads `.ofx.bundle`s with `libloading`.
