//! The OpenFX effect: identity, parameters, action handlers and the `extern "C"` entry points.
