//! The OpenFX effect: identity, parameters, action handlers and the `extern "C"` entry points.
//!
//! Entry points (`OfxGetNumberOfPlugins`, `OfxGetPlugin`, `OfxSetHost`, and the plug-in's
//! `setHost` and main entry) each run inside `catch_unwind`: an error or a panic becomes an OFX
//! status plus a host message and a log line, never an unwind into the host (STYLE.md §3,
//! gyroflow-ofx#18).
//!
//! Files: `params.rs` (the parameter table), `actions.rs` (one handler per action), `render.rs`
//! (pixel I/O and the pass-through), `body.rs` (the body render behind Render and GetFramesNeeded),
//! `face.rs` (the face pass's inputs from the host; the engine's `face_service` holds its
//! process-global models and cache),
//! `colour.rs` (the `colorspace` choice and sRGB transfer), `state.rs` (process-global state),
//! `logging.rs` (file logger), `error.rs` (errors and their message texts).
/// The engine behind the effect.
pub(crate) use anchor_engine as engine;

pub mod actions;
pub mod body;
pub mod colour;
pub mod error;
pub mod face;
pub mod logging;
pub mod params;
pub mod render;
pub mod state;

use anchor_ofx::message::{self, MessageType};
use anchor_ofx::names::{kOfxImageEffectPluginApi, kOfxImageEffectPluginApiVersion};
use anchor_ofx::{ImageEffect, PropertySet, Status};
use error::EffectError;
use openfx::sys::generic::core::{OfxHost, OfxPlugin, OfxPropertySetHandle, OfxStatus};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Plug-in identifier (reverse domain); hosts store it in projects. Never change it.
pub const PLUGIN_IDENTIFIER: &CStr = c"org.makeyouranchor.Anchor";
/// Name shown in hosts' menus.
pub const PLUGIN_LABEL: &str = "Make Your Anchor";
/// Menu group.
pub const PLUGIN_GROUPING: &str = "Make-Your-Anchor";
/// Description shown by hosts.
pub const PLUGIN_DESCRIPTION: &str = "Make-Your-Anchor (CVPR 2024): renders a person's video from a body-mesh render track, with an SD-1.5 UNet and ControlNet denoising windows of frames together. Source is the mesh-render track; the optional Appearance clip is a reference still.";
/// Major version: bump when a saved project would break (a clip or parameter removed or
/// retyped); hosts then treat it as a different plug-in.
pub const VERSION_MAJOR: u32 = 1;
/// Minor version: bump for compatible changes (new parameters with defaults, fixes).
pub const VERSION_MINOR: u32 = 0;
/// Version shown to people.
pub const VERSION_LABEL: &str = "1.0";

/// The mesh-render input clip.
pub const SOURCE_CLIP: &str = "Source";
/// The output clip.
pub const OUTPUT_CLIP: &str = "Output";
/// The optional reference-still clip (General context only).
pub const APPEARANCE_CLIP: &str = "Appearance";
/// The optional matte/ID pass of the head, rendered with the mesh (General context only).
pub const FACE_MATTE_CLIP: &str = "FaceMatte";
/// The optional head reference still of the face pass (General context only).
pub const FACE_APPEARANCE_CLIP: &str = "FaceAppearance";

/// No tiles: diffusion needs the whole frame at once.
pub const SUPPORTS_TILES: bool = false;
/// No render scale: we always render at full resolution. The networks work at a fixed working
/// resolution whatever the input size, so a proxy render would cost the same diffusion work; its
/// control frames (downscaled by the host) would hash differently and give a different picture
/// with its own cache entries, and scrubbing at proxy scale would then show frames that differ
/// from the final render (ofx-hosts.md, render scale).
pub const SUPPORTS_MULTI_RESOLUTION: bool = false;

/// The plug-in as handed to the host. `OfxPlugin` is `Sync` in `openfx` (it holds only
/// pointers to static strings and functions).
static PLUGIN: OfxPlugin = OfxPlugin {
    pluginApi: kOfxImageEffectPluginApi.as_ptr(),
    apiVersion: kOfxImageEffectPluginApiVersion as c_int,
    pluginIdentifier: PLUGIN_IDENTIFIER.as_ptr(),
    pluginVersionMajor: VERSION_MAJOR,
    pluginVersionMinor: VERSION_MINOR,
    setHost: Some(plugin_set_host),
    mainEntry: Some(main_entry),
};

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Run `f`, turning a panic into `fallback` (logged).
fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            log::error!("panic in {what}: {}", panic_text(&*payload));
            fallback
        }
    }
}

/// OFX: the number of plug-ins in this binary.
#[no_mangle]
pub extern "C" fn OfxGetNumberOfPlugins() -> c_int {
    guard("OfxGetNumberOfPlugins", 0, || 1)
}

/// OFX: the `nth` plug-in, or null when out of range.
#[no_mangle]
pub extern "C" fn OfxGetPlugin(nth: c_int) -> *const OfxPlugin {
    guard("OfxGetPlugin", std::ptr::null(), || {
        if nth == 0 {
            &PLUGIN as *const OfxPlugin
        } else {
            std::ptr::null()
        }
    })
}

/// OFX 1.5: the host hands itself over before `OfxGetPlugin`. Returns `kOfxStatOK`, or
/// `kOfxStatFailed`/`kOfxStatErrMissingHostFeature` when the host is unusable.
///
/// # Safety
/// `host` must be null or point to an `OfxHost` that outlives the loaded binary.
#[no_mangle]
pub unsafe extern "C" fn OfxSetHost(host: *const OfxHost) -> OfxStatus {
    guard("OfxSetHost", Status::Failed.to_raw(), || {
        logging::init_from_env();
        // SAFETY: the caller's contract.
        match unsafe { anchor_ofx::set_host(host) } {
            Ok(h) => {
                log::debug!("host set: {:?}", h.name());
                Status::Ok.to_raw()
            }
            Err(e) => {
                log::error!("the host cannot run Make Your Anchor: {e}");
                e.status().to_raw()
            }
        }
    })
}

/// `OfxPlugin::setHost`: pre-1.5 hosts hand themselves over here.
unsafe extern "C" fn plugin_set_host(host: *mut OfxHost) {
    // SAFETY: the host's contract, as for OfxSetHost.
    unsafe { OfxSetHost(host) };
}

/// `OfxPlugin::mainEntry`: every action comes through here.
unsafe extern "C" fn main_entry(
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    if action.is_null() {
        return Status::ErrUnknown.to_raw();
    }
    // SAFETY: the host passes a NUL-terminated action name.
    let action = unsafe { CStr::from_ptr(action) };
    let effect = ImageEffect::from_raw(handle);
    let result = catch_unwind(AssertUnwindSafe(|| {
        actions::dispatch(
            action,
            effect,
            PropertySet::from_raw(in_args),
            PropertySet::from_raw(out_args),
        )
    }));
    let outcome = match result {
        Ok(r) => r,
        Err(payload) => Err(EffectError::Panic {
            action: action.to_string_lossy().into_owned(),
            message: panic_text(&*payload),
        }),
    };
    match outcome {
        Ok(status) => status.to_raw(),
        Err(err) => {
            // Reporting must not unwind either.
            guard("error report", (), || report(action, effect, &err));
            err.status().to_raw()
        }
    }
}

/// Log an error and post it to the host's message suite.
fn report(action: &CStr, effect: ImageEffect, err: &EffectError) {
    let action_name = action.to_string_lossy();
    let kind = err.message_type();
    if kind == MessageType::Log {
        log::info!("{action_name}: {err}");
    } else {
        log::error!("{action_name}: {err}");
    }
    let on_instance = actions::Action::from_name(action).is_none_or(|a| a.has_instance());
    let target = if on_instance {
        effect
    } else {
        ImageEffect::from_raw(std::ptr::null())
    };
    if let Err(e) = message::message(target, kind, err.message_id(), &err.to_string()) {
        log::warn!("could not post the message to the host: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_table_is_well_formed() {
        assert_eq!(OfxGetNumberOfPlugins(), 1);
        let p = OfxGetPlugin(0);
        assert!(!p.is_null());
        assert!(OfxGetPlugin(1).is_null());
        assert!(OfxGetPlugin(-1).is_null());
        // SAFETY: `p` is the static PLUGIN.
        let p = unsafe { &*p };
        // SAFETY: static NUL-terminated strings.
        let id = unsafe { CStr::from_ptr(p.pluginIdentifier) };
        assert_eq!(id, c"org.makeyouranchor.Anchor");
        // SAFETY: as above.
        let api = unsafe { CStr::from_ptr(p.pluginApi) };
        assert_eq!(api, c"OfxImageEffectPluginAPI");
        assert_eq!(
            (p.apiVersion, p.pluginVersionMajor, p.pluginVersionMinor),
            (1, 1, 0)
        );
    }

    #[test]
    fn null_host_and_null_action_fail_cleanly() {
        // SAFETY: null is allowed.
        assert_eq!(unsafe { OfxSetHost(std::ptr::null()) }, 1, "kOfxStatFailed");
        // SAFETY: a null action is rejected before any use of the other arguments.
        let status = unsafe {
            main_entry(
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, 3, "kOfxStatErrUnknown");
    }

    #[test]
    fn untrapped_action_replies_default_and_errors_without_host_fail() {
        // SAFETY: static action names; no host is set in unit tests, so host calls fail cleanly.
        let status = unsafe {
            main_entry(
                c"OfxActionSyncPrivateData".as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, 14, "kOfxStatReplyDefault");
        // SAFETY: as above; Describe needs the (absent) host and must fail, not crash.
        let status = unsafe {
            main_entry(
                c"OfxActionDescribe".as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, 1, "kOfxStatFailed");
    }
}
