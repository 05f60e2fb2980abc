//! Opening an `.ofx.bundle` (or a bare `.ofx` binary) with `libloading`, listing its plugins
//! and calling a plugin's `mainEntry`.
//!
//! Binaries are never unloaded (the library handle is leaked): a plugin's worker threads or
//! thread-local destructors may outlive `kOfxActionUnload`, and Natron does not unload either
//! (hosts.md). The host supports x86-64 Linux bundles (`Contents/Linux-x86-64/`).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

use libloading::Library;
use openfx::sys::generic::core::*;
use openfx::sys::image_effect_v1::image_effect::kOfxImageEffectPluginApi;

use crate::effect::Effect;
use crate::error::HostError;
use crate::props::PropertySet;

/// The bundle's architecture folder this host loads from.
pub const ARCH_DIR: &str = "Linux-x86-64";

/// One plugin exported by a binary.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// `pluginIdentifier`.
    pub id: String,
    /// `pluginApi` (must be `OfxImageEffectPluginAPI`).
    pub api: String,
    /// `apiVersion` (1 for image effects).
    pub api_version: i32,
    /// Major, minor version.
    pub version: (u32, u32),
    ptr: usize,
}

/// A loaded binary and its plugins.
pub struct Bundle {
    /// The `.ofx` binary.
    pub binary: PathBuf,
    /// Plugins it exports.
    pub plugins: Vec<PluginInfo>,
    host: *mut OfxHost,
}

/// The binary inside a bundle directory, or the path itself if it is a file.
pub fn find_binary(path: &Path) -> Result<PathBuf, HostError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let arch = path.join("Contents").join(ARCH_DIR);
    let err = |reason: String| HostError::Bundle {
        path: path.display().to_string(),
        reason,
    };
    let entries =
        std::fs::read_dir(&arch).map_err(|e| err(format!("no {} folder ({e})", arch.display())))?;
    let mut bins: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ofx") && p.is_file())
        .collect();
    bins.sort();
    bins.into_iter()
        .next()
        .ok_or_else(|| err(format!("no .ofx binary in {}", arch.display())))
}

type SetHostFn = unsafe extern "C" fn(*const OfxHost) -> OfxStatus;
type CountFn = unsafe extern "C" fn() -> c_int;
type GetPluginFn = unsafe extern "C" fn(c_int) -> *mut OfxPlugin;

unsafe fn cstr_or_empty(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the plugin's static strings are NUL-terminated.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Bundle {
    /// Load the binary of `path`, call `OfxSetHost` if exported (OFX 1.5: before anything
    /// else), then list the plugins.
    pub fn open(path: &Path, host: *mut OfxHost) -> Result<Bundle, HostError> {
        let binary = find_binary(path)?;
        let err = |reason: String| HostError::Bundle {
            path: binary.display().to_string(),
            reason,
        };
        // SAFETY: loading a plugin runs its initialisers; that is what a host does.
        let lib = unsafe { Library::new(&binary) }.map_err(|e| err(e.to_string()))?;
        let lib: &'static Library = Box::leak(Box::new(lib));
        // SAFETY: symbol types follow ofxCore.h.
        unsafe {
            if let Ok(set_host) = lib.get::<SetHostFn>(b"OfxSetHost\0") {
                let st = set_host(host);
                if st != kOfxStatOK {
                    return Err(err(format!(
                        "OfxSetHost returned {}",
                        crate::status::status_name(st)
                    )));
                }
            }
            let count = lib
                .get::<CountFn>(b"OfxGetNumberOfPlugins\0")
                .map_err(|e| err(format!("missing OfxGetNumberOfPlugins: {e}")))?;
            let get = lib
                .get::<GetPluginFn>(b"OfxGetPlugin\0")
                .map_err(|e| err(format!("missing OfxGetPlugin: {e}")))?;
            let n = count();
            let mut plugins = Vec::new();
            for i in 0..n.max(0) {
                let p = get(i);
                if p.is_null() {
                    return Err(err(format!("OfxGetPlugin({i}) returned null")));
                }
                let pl = &*p;
                plugins.push(PluginInfo {
                    id: cstr_or_empty(pl.pluginIdentifier),
                    api: cstr_or_empty(pl.pluginApi),
                    api_version: pl.apiVersion,
                    version: (pl.pluginVersionMajor, pl.pluginVersionMinor),
                    ptr: p as usize,
                });
            }
            Ok(Bundle {
                binary,
                plugins,
                host,
            })
        }
    }

    /// The plugin with identifier `id` (or the only image-effect plugin when `id` is `None`),
    /// with `setHost` already called.
    pub fn plugin(&self, id: Option<&str>) -> Result<Plugin, HostError> {
        let effects: Vec<&PluginInfo> = self
            .plugins
            .iter()
            .filter(|p| p.api.as_bytes() == kOfxImageEffectPluginApi.to_bytes())
            .collect();
        let available = || {
            self.plugins
                .iter()
                .map(|p| format!("{} ({} v{})", p.id, p.api, p.api_version))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let info = match id {
            Some(id) => self.plugins.iter().find(|p| p.id == id),
            None if effects.len() == 1 => effects.first().copied(),
            None => None,
        }
        .ok_or_else(|| HostError::PluginNotFound {
            wanted: id
                .unwrap_or("(the only image effect; use --plugin)")
                .to_string(),
            available: available(),
        })?;
        if info.api.as_bytes() != kOfxImageEffectPluginApi.to_bytes() || info.api_version != 1 {
            return Err(HostError::Bundle {
                path: self.binary.display().to_string(),
                reason: format!(
                    "{} is a {} v{} plugin; this host runs OfxImageEffectPluginAPI v1",
                    info.id, info.api, info.api_version
                ),
            });
        }
        let p = info.ptr as *mut OfxPlugin;
        // SAFETY: the plugin struct is static data of the loaded binary.
        let (set_host, main) = unsafe { ((*p).setHost, (*p).mainEntry) };
        let main = main.ok_or_else(|| HostError::Bundle {
            path: self.binary.display().to_string(),
            reason: format!("{} has no mainEntry", info.id),
        })?;
        if let Some(set_host) = set_host {
            // SAFETY: the host struct is leaked, so it outlives the plugin.
            unsafe { set_host(self.host) };
        }
        Ok(Plugin {
            info: info.clone(),
            main,
        })
    }
}

/// A plugin ready to receive actions.
pub struct Plugin {
    /// What the binary says about it.
    pub info: PluginInfo,
    main: unsafe extern "C" fn(
        *const c_char,
        *const c_void,
        OfxPropertySetHandle,
        OfxPropertySetHandle,
    ) -> OfxStatus,
}

// SAFETY: the entry point is a plain function of a loaded (never unloaded) binary.
unsafe impl Send for Plugin {}
// SAFETY: see above; thread safety of the plugin itself is what the host tests.
unsafe impl Sync for Plugin {}

impl Plugin {
    /// A plugin from a bare entry point (tests drive the host with in-process fake plugins).
    pub fn from_entry(
        id: &str,
        main: unsafe extern "C" fn(
            *const c_char,
            *const c_void,
            OfxPropertySetHandle,
            OfxPropertySetHandle,
        ) -> OfxStatus,
    ) -> Plugin {
        Plugin {
            info: PluginInfo {
                id: id.to_string(),
                api: kOfxImageEffectPluginApi.to_string_lossy().into_owned(),
                api_version: 1,
                version: (1, 0),
                ptr: 0,
            },
            main,
        }
    }

    /// Send an action to `effect` (a descriptor or instance; `None` for Load/Unload).
    pub fn call(
        &self,
        action: &CStr,
        effect: Option<&Effect>,
        in_args: Option<&PropertySet>,
        out_args: Option<&PropertySet>,
    ) -> OfxStatus {
        let handle = effect.map_or(std::ptr::null(), |e| e.handle() as *const c_void);
        let ia = in_args.map_or(std::ptr::null_mut(), |p| p.handle());
        let oa = out_args.map_or(std::ptr::null_mut(), |p| p.handle());
        log::debug!("-> {action:?}");
        crate::messages::mark_action();
        // SAFETY: calling the plugin's entry point as the OFX API specifies.
        let st = unsafe { (self.main)(action.as_ptr(), handle, ia, oa) };
        log::debug!("<- {action:?}: {}", crate::status::status_name(st));
        st
    }
}
