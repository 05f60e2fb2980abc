//! The process-global host: the `OfxHost` given to `OfxSetHost`/`setHost`, and its suites.
//!
//! The host hands us one `OfxHost` per process (hosts such as MLT call `setHost` again on every
//! load; the last call wins). Suites are fetched once, when the host is set, and stay valid until
//! the binary is unloaded (OFX 1.5 `ofxCore.h`, `OfxHost::fetchSuite`).
use crate::error::{Error, Result};
use crate::names;
use crate::property::PropertySet;
use openfx::sys::generic::core::OfxHost;
use openfx::sys::generic::property::OfxPropertySuiteV1;
use openfx::sys::image_effect_v1::image_effect::OfxImageEffectSuiteV1;
use openfx::sys::image_effect_v1::memory::OfxMemorySuiteV1;
use openfx::sys::image_effect_v1::message::{OfxMessageSuiteV1, OfxMessageSuiteV2};
use openfx::sys::image_effect_v1::multi_thread::OfxMultiThreadSuiteV1;
use openfx::sys::image_effect_v1::param::OfxParameterSuiteV1;
use openfx::sys::image_effect_v1::progress::{OfxProgressSuiteV1, OfxProgressSuiteV2};
use parking_lot::RwLock;
use std::ffi::CStr;

/// The message suite the host offers: V2 adds persistent messages.
#[derive(Clone, Copy, Debug)]
pub enum MessageSuite {
    /// `OfxMessageSuite` version 1.
    V1(&'static OfxMessageSuiteV1),
    /// `OfxMessageSuite` version 2.
    V2(&'static OfxMessageSuiteV2),
}

/// The progress suite the host offers: V2 adds a message id.
#[derive(Clone, Copy, Debug)]
pub enum ProgressSuite {
    /// `OfxProgressSuite` version 1.
    V1(&'static OfxProgressSuiteV1),
    /// `OfxProgressSuite` version 2.
    V2(&'static OfxProgressSuiteV2),
}

/// The host and the suites fetched from it. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    raw: &'static OfxHost,
    /// Property suite V1 (required).
    pub property: &'static OfxPropertySuiteV1,
    /// Image-effect suite V1 (required).
    pub image_effect: &'static OfxImageEffectSuiteV1,
    /// Parameter suite V1 (required).
    pub parameter: &'static OfxParameterSuiteV1,
    /// Memory suite V1, if the host has one.
    pub memory: Option<&'static OfxMemorySuiteV1>,
    /// Multithread suite V1, if the host has one.
    pub multithread: Option<&'static OfxMultiThreadSuiteV1>,
    /// Message suite, if the host has one (V2 preferred).
    pub message: Option<MessageSuite>,
    /// Progress suite, if the host has one (V2 preferred).
    pub progress: Option<ProgressSuite>,
}

// SAFETY: the host's `OfxHost` and suite tables are immutable function tables that live as long as
// the binary is loaded; OFX requires suites to be callable from any thread.
unsafe impl Send for Host {}
unsafe impl Sync for Host {}

impl Host {
    /// The host's property set (`OfxHost::host`): name, label, capabilities.
    pub fn properties(&self) -> PropertySet {
        PropertySet::from_raw(self.raw.host)
    }

    /// The host's `kOfxPropName`, or an empty string when it has none.
    pub fn name(&self) -> String {
        self.properties()
            .get_string(names::kOfxPropName, 0)
            .unwrap_or_default()
    }

    /// Fetch a suite by name and version; `None` when the host lacks it.
    ///
    /// # Safety
    /// `T` must be the C struct of that suite and version.
    pub unsafe fn fetch_suite<T>(&self, name: &CStr, version: i32) -> Option<&'static T> {
        let fetch = self.raw.fetchSuite?;
        // SAFETY: per the caller's contract `T` matches the suite; the host keeps it alive.
        let ptr = unsafe { fetch(self.raw.host, name.as_ptr(), version) };
        // SAFETY: non-null suite pointers stay valid while the binary is loaded.
        unsafe { ptr.cast::<T>().as_ref() }
    }
}

static HOST: RwLock<Option<Host>> = RwLock::new(None);

fn suite_name(name: &'static CStr) -> &'static str {
    name.to_str().unwrap_or("?")
}

/// Set the process-global host from the pointer given to `OfxSetHost`/`setHost`, fetching suites.
///
/// Fails with [`Error::NoHost`] for a null pointer and [`Error::MissingSuite`] when a required
/// suite (property, image effect, parameter) is absent; the previous host is then kept.
///
/// # Safety
/// `raw` must be null or point to an `OfxHost` that outlives the loaded binary.
pub unsafe fn set_host(raw: *const OfxHost) -> Result<Host> {
    // SAFETY: caller's contract.
    let raw: &'static OfxHost = unsafe { raw.as_ref() }.ok_or(Error::NoHost)?;
    let probe = Host {
        raw,
        // The three suites every image effect needs; the optional ones are fetched below.
        property: required::<OfxPropertySuiteV1>(raw, names::kOfxPropertySuite)?,
        image_effect: required::<OfxImageEffectSuiteV1>(raw, names::kOfxImageEffectSuite)?,
        parameter: required::<OfxParameterSuiteV1>(raw, names::kOfxParameterSuite)?,
        memory: None,
        multithread: None,
        message: None,
        progress: None,
    };
    // SAFETY: each type matches the suite name and version asked for.
    let host = unsafe {
        Host {
            memory: probe.fetch_suite(names::kOfxMemorySuite, 1),
            multithread: probe.fetch_suite(names::kOfxMultiThreadSuite, 1),
            message: match probe.fetch_suite(names::kOfxMessageSuite, 2) {
                Some(v2) => Some(MessageSuite::V2(v2)),
                None => probe
                    .fetch_suite(names::kOfxMessageSuite, 1)
                    .map(MessageSuite::V1),
            },
            progress: match probe.fetch_suite(names::kOfxProgressSuite, 2) {
                Some(v2) => Some(ProgressSuite::V2(v2)),
                None => probe
                    .fetch_suite(names::kOfxProgressSuite, 1)
                    .map(ProgressSuite::V1),
            },
            ..probe
        }
    };
    *HOST.write() = Some(host);
    Ok(host)
}

fn required<T>(raw: &'static OfxHost, name: &'static CStr) -> Result<&'static T> {
    let fetch = raw.fetchSuite.ok_or(Error::MissingFunction("fetchSuite"))?;
    // SAFETY: `T` is the V1 struct of the suite named `name` (callers above pair them).
    let ptr = unsafe { fetch(raw.host, name.as_ptr(), 1) };
    // SAFETY: a non-null suite stays valid while the binary is loaded.
    unsafe { ptr.cast::<T>().as_ref() }.ok_or(Error::MissingSuite {
        name: suite_name(name),
        version: 1,
    })
}

/// Forget the host; later calls fail with [`Error::NoHost`]. Not called on Unload: hosts such as
/// hostDemo send Load again after Unload without a new `setHost`.
pub fn clear_host() {
    *HOST.write() = None;
}

/// The current host, or [`Error::NoHost`].
pub fn host() -> Result<Host> {
    (*HOST.read()).ok_or(Error::NoHost)
}

/// Unwrap a suite function pointer, naming it in the error when the host left it null.
pub(crate) fn func<F>(f: Option<F>, name: &'static str) -> Result<F> {
    f.ok_or(Error::MissingFunction(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openfx::sys::generic::core::OfxPropertySetHandle;
    use std::ffi::{c_char, c_int, c_void};

    unsafe extern "C" fn no_suites(
        _host: OfxPropertySetHandle,
        _name: *const c_char,
        _version: c_int,
    ) -> *const c_void {
        std::ptr::null()
    }

    #[test]
    fn null_host_and_missing_suites_are_errors() {
        // SAFETY: null is allowed.
        assert!(matches!(
            unsafe { set_host(std::ptr::null()) },
            Err(Error::NoHost)
        ));
        let raw: &'static OfxHost = Box::leak(Box::new(OfxHost {
            host: std::ptr::null_mut(),
            fetchSuite: Some(no_suites),
        }));
        // SAFETY: `raw` is leaked, so it outlives the test.
        let err = unsafe { set_host(raw) }.err();
        assert_eq!(
            err.as_ref().map(ToString::to_string).as_deref(),
            Some("the host does not provide the OfxPropertySuite suite (version 1)")
        );
        assert_eq!(
            err.map(|e| e.status()),
            Some(crate::Status::ErrMissingHostFeature)
        );
        assert!(
            matches!(host(), Err(Error::NoHost)),
            "a failed set_host keeps no host"
        );
    }
}
