//! The host object (`OfxHost` + host properties), `fetchSuite`, and the small suites: memory,
//! multithread (real threads, recursive mutexes), message (v1/v2, recorded), progress (v1/v2,
//! answers "cancel" once the host aborted) and time line.
//!
//! The message suite's `message` is C-variadic (printf arguments). Like the parameter suite
//! (params.rs), it is defined with fixed trailing parameters that pick the x86-64 SysV argument
//! registers up: after the four fixed arguments, integer/pointer varargs arrive in r8, r9 and
//! then the stack, doubles in xmm0-7. Six integer and eight double arguments are read.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::Ordering;

use openfx::sys::generic::core::*;
use openfx::sys::generic::property::kOfxPropertySuite;
use openfx::sys::image_effect_v1::image_effect::*;
use openfx::sys::image_effect_v1::memory::*;
use openfx::sys::image_effect_v1::message::*;
use openfx::sys::image_effect_v1::multi_thread::*;
use openfx::sys::image_effect_v1::param::*;
use openfx::sys::image_effect_v1::progress::*;
use openfx::sys::image_effect_v1::time_line::*;
use parking_lot::lock_api::RawReentrantMutex;
use parking_lot::{RawMutex, RawThreadId};

use crate::effect::{current_render_time, Effect, IMAGE_EFFECT_SUITE};
use crate::messages::{self, format_printf, Message, VarArgs};
use crate::params::PARAMETER_SUITE;
use crate::props::{PropertySet, PROPERTY_SUITE};
use crate::status::check_magic;

/// The host's name (`kOfxPropName`).
pub const HOST_NAME: &str = "org.makeyouranchor.ofx-render";

/// Host capabilities that vary per run.
#[derive(Debug, Clone, Copy)]
pub struct HostCaps {
    /// `kOfxImageEffectPropTemporalClipAccess` (false emulates MLT).
    pub temporal: bool,
}

/// Build the host descriptor handed to `setHost`. It is leaked on purpose: a plugin may keep
/// the pointer until the process exits (hosts never unload binaries here, see bundle.rs).
pub fn make_host(caps: HostCaps) -> *mut OfxHost {
    let props: &'static PropertySet = Box::leak(Box::new(PropertySet::new("host")));
    props.cstr(kOfxPropType, &[kOfxTypeImageEffectHost]);
    props.str(kOfxPropName, &[HOST_NAME]);
    props.str(kOfxPropLabel, &["ofx-render (Make-Your-Anchor test host)"]);
    props.int(kOfxPropAPIVersion, &[1, 4]);
    props.int(kOfxPropVersion, &[0, 1, 0]);
    props.str(kOfxPropVersionLabel, &[env!("CARGO_PKG_VERSION")]);
    props.int(kOfxImageEffectHostPropIsBackground, &[1]);
    props.int(kOfxImageEffectPropSupportsOverlays, &[0]);
    props.int(kOfxImageEffectPropSupportsMultiResolution, &[0]);
    props.int(kOfxImageEffectPropSupportsTiles, &[1]);
    props.int(
        kOfxImageEffectPropTemporalClipAccess,
        &[caps.temporal as i32],
    );
    props.cstr(
        kOfxImageEffectPropSupportedComponents,
        &[
            kOfxImageComponentRGBA,
            kOfxImageComponentRGB,
            kOfxImageComponentAlpha,
        ],
    );
    props.cstr(
        kOfxImageEffectPropSupportedContexts,
        &[kOfxImageEffectContextFilter, kOfxImageEffectContextGeneral],
    );
    props.cstr(
        kOfxImageEffectPropSupportedPixelDepths,
        &[
            kOfxBitDepthByte,
            kOfxBitDepthShort,
            kOfxBitDepthHalf,
            kOfxBitDepthFloat,
        ],
    );
    props.int(kOfxImageEffectPropSupportsMultipleClipDepths, &[0]);
    props.int(kOfxImageEffectPropSupportsMultipleClipPARs, &[0]);
    props.int(kOfxImageEffectPropSetableFrameRate, &[0]);
    props.int(kOfxImageEffectPropSetableFielding, &[0]);
    props.int(kOfxImageEffectInstancePropSequentialRender, &[0]);
    props.int(kOfxImageEffectPropRenderQualityDraft, &[0]);
    props.cstr(
        kOfxImageEffectHostPropNativeOrigin,
        &[kOfxHostNativeOriginBottomLeft],
    );
    props.int(kOfxParamHostPropSupportsCustomInteract, &[0]);
    props.int(kOfxParamHostPropSupportsStringAnimation, &[0]);
    props.int(kOfxParamHostPropSupportsChoiceAnimation, &[0]);
    props.int(kOfxParamHostPropSupportsBooleanAnimation, &[0]);
    props.int(kOfxParamHostPropSupportsCustomAnimation, &[0]);
    props.int(kOfxParamHostPropSupportsStrChoice, &[1]);
    props.int(kOfxParamHostPropSupportsStrChoiceAnimation, &[0]);
    props.int(kOfxParamHostPropMaxParameters, &[-1]);
    props.int(kOfxParamHostPropMaxPages, &[0]);
    props.int(kOfxParamHostPropPageRowColumnCount, &[0, 0]);
    props.ptr(kOfxPropHostOSHandle, &[0]);
    Box::leak(Box::new(OfxHost {
        host: props.handle(),
        fetchSuite: Some(fetch_suite),
    }))
}

unsafe extern "C" fn fetch_suite(
    _host: OfxPropertySetHandle,
    name: *const c_char,
    version: c_int,
) -> *const c_void {
    if name.is_null() {
        return std::ptr::null();
    }
    // SAFETY: the plugin passes a NUL-terminated suite name.
    let name = unsafe { CStr::from_ptr(name) };
    let is = |c: &CStr| c == name;
    let p: *const c_void = match version {
        1 if is(kOfxPropertySuite) => &PROPERTY_SUITE as *const _ as *const c_void,
        1 if is(kOfxImageEffectSuite) => &IMAGE_EFFECT_SUITE as *const _ as *const c_void,
        1 if is(kOfxParameterSuite) => &PARAMETER_SUITE as *const _ as *const c_void,
        1 if is(kOfxMemorySuite) => &MEMORY_SUITE as *const _ as *const c_void,
        1 if is(kOfxMultiThreadSuite) => &MULTI_THREAD_SUITE as *const _ as *const c_void,
        1 if is(kOfxMessageSuite) => &MESSAGE_SUITE_V1 as *const _ as *const c_void,
        2 if is(kOfxMessageSuite) => &MESSAGE_SUITE_V2 as *const _ as *const c_void,
        1 if is(kOfxProgressSuite) => &PROGRESS_SUITE_V1 as *const _ as *const c_void,
        2 if is(kOfxProgressSuite) => &PROGRESS_SUITE_V2 as *const _ as *const c_void,
        1 if is(kOfxTimeLineSuite) => &TIME_LINE_SUITE as *const _ as *const c_void,
        _ => std::ptr::null(),
    };
    log::debug!("fetchSuite({name:?}, {version}) -> {p:?}");
    p
}

// ---------------------------------------------------------------- memory

/// Header in front of each `memoryAlloc` block: its total size, so `memoryFree` can free it.
const MEM_HEADER: usize = 16;

unsafe extern "C" fn memory_alloc(
    _handle: *mut c_void,
    n: usize,
    out: *mut *mut c_void,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    let Some(total) = n.checked_add(MEM_HEADER) else {
        return kOfxStatErrMemory;
    };
    let Ok(layout) = std::alloc::Layout::from_size_align(total, 16) else {
        return kOfxStatErrMemory;
    };
    // SAFETY: layout has non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return kOfxStatErrMemory;
    }
    // SAFETY: p has room for the header; the block follows it.
    unsafe {
        (p as *mut usize).write(total);
        *out = p.add(MEM_HEADER) as *mut c_void;
    }
    kOfxStatOK
}

unsafe extern "C" fn memory_free(data: *mut c_void) -> OfxStatus {
    if data.is_null() {
        return kOfxStatErrBadHandle;
    }
    // SAFETY: `data` came from memory_alloc, which put the header just before it.
    unsafe {
        let p = (data as *mut u8).sub(MEM_HEADER);
        let total = (p as *const usize).read();
        match std::alloc::Layout::from_size_align(total, 16) {
            Ok(layout) => std::alloc::dealloc(p, layout),
            Err(_) => return kOfxStatErrBadHandle,
        }
    }
    kOfxStatOK
}

/// The memory suite.
pub static MEMORY_SUITE: OfxMemorySuiteV1 = OfxMemorySuiteV1 {
    memoryAlloc: Some(memory_alloc),
    memoryFree: Some(memory_free),
};

// ---------------------------------------------------------------- multithread

thread_local! {
    static THREAD_INDEX: Cell<Option<c_uint>> = const { Cell::new(None) };
}

fn num_cpus() -> c_uint {
    std::thread::available_parallelism().map_or(1, |n| n.get() as c_uint)
}

unsafe extern "C" fn multi_thread(
    func: OfxThreadFunctionV1,
    n: c_uint,
    arg: *mut c_void,
) -> OfxStatus {
    let Some(f) = func else {
        return kOfxStatErrValue;
    };
    let n = if n == 0 { num_cpus() } else { n };
    if THREAD_INDEX.with(|c| c.get()).is_some() {
        // The spec forbids nesting; run the work inline rather than oversubscribe.
        for i in 0..n {
            // SAFETY: calling the plugin's thread function with its own argument.
            unsafe { f(i, n, arg) };
        }
        return kOfxStatOK;
    }
    let arg = arg as usize;
    let render = crate::effect::render_context();
    let spawned = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..n {
            let b = std::thread::Builder::new().name(format!("ofx-mt-{i}"));
            let h = b.spawn_scoped(s, move || {
                THREAD_INDEX.with(|c| c.set(Some(i)));
                crate::effect::set_render_context(render);
                // SAFETY: calling the plugin's thread function with its own argument.
                unsafe { f(i, n, arg as *mut c_void) };
            });
            match h {
                Ok(h) => handles.push(h),
                Err(_) => return false,
            }
        }
        handles.into_iter().all(|h| h.join().is_ok())
    });
    if spawned {
        kOfxStatOK
    } else {
        kOfxStatFailed
    }
}

unsafe extern "C" fn multi_thread_num_cpus(out: *mut c_uint) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null.
    unsafe { *out = num_cpus() };
    kOfxStatOK
}

unsafe extern "C" fn multi_thread_index(out: *mut c_uint) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out checked non-null. Threads not spawned by multiThread are index 0.
    unsafe { *out = THREAD_INDEX.with(|c| c.get()).unwrap_or(0) };
    kOfxStatOK
}

unsafe extern "C" fn multi_thread_is_spawned() -> c_int {
    THREAD_INDEX.with(|c| c.get()).is_some() as c_int
}

const MUTEX_MAGIC: u64 = 0x4F46_584D_5554_4558;

/// A recursive mutex, as the OFX multithread suite specifies.
#[repr(C)]
struct HostMutex {
    magic: u64,
    raw: RawReentrantMutex<RawMutex, RawThreadId>,
}

unsafe fn mutex_from<'a>(h: OfxMutexHandle) -> Option<&'a HostMutex> {
    let p = h as *const HostMutex;
    // SAFETY: magic check rejects foreign pointers.
    if unsafe { check_magic(p as *const u64, MUTEX_MAGIC) } {
        Some(unsafe { &*p })
    } else {
        None
    }
}

unsafe extern "C" fn mutex_create(out: *mut OfxMutexHandle, lock_count: c_int) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    let m = Box::new(HostMutex {
        magic: MUTEX_MAGIC,
        raw: RawReentrantMutex::INIT,
    });
    for _ in 0..lock_count.max(0) {
        m.raw.lock();
    }
    // SAFETY: out checked non-null.
    unsafe { *out = Box::into_raw(m) as OfxMutexHandle };
    kOfxStatOK
}

unsafe extern "C" fn mutex_destroy(h: OfxMutexHandle) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { mutex_from(h) } {
        Some(m) => {
            if m.raw.is_locked() && !m.raw.is_owned_by_current_thread() {
                messages::violation("mutexDestroy on a mutex another thread holds");
            }
            // SAFETY: allocated by Box::into_raw in mutex_create; the magic is cleared first so
            // a second destroy is caught.
            unsafe {
                (h as *mut u64).write(0);
                drop(Box::from_raw(h as *mut HostMutex));
            }
            kOfxStatOK
        }
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn mutex_lock(h: OfxMutexHandle) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { mutex_from(h) } {
        Some(m) => {
            m.raw.lock();
            kOfxStatOK
        }
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn mutex_unlock(h: OfxMutexHandle) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { mutex_from(h) } {
        Some(m) if m.raw.is_owned_by_current_thread() => {
            // SAFETY: this thread holds the lock.
            unsafe { m.raw.unlock() };
            kOfxStatOK
        }
        Some(_) => {
            messages::violation("mutexUnLock on a mutex this thread does not hold");
            kOfxStatErrBadHandle
        }
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn mutex_try_lock(h: OfxMutexHandle) -> OfxStatus {
    // SAFETY: checked by magic.
    match unsafe { mutex_from(h) } {
        Some(m) if m.raw.try_lock() => kOfxStatOK,
        Some(_) => kOfxStatFailed,
        None => kOfxStatErrBadHandle,
    }
}

/// The multithread suite.
pub static MULTI_THREAD_SUITE: OfxMultiThreadSuiteV1 = OfxMultiThreadSuiteV1 {
    multiThread: Some(multi_thread),
    multiThreadNumCPUs: Some(multi_thread_num_cpus),
    multiThreadIndex: Some(multi_thread_index),
    multiThreadIsSpawnedThread: Some(multi_thread_is_spawned),
    mutexCreate: Some(mutex_create),
    mutexDestroy: Some(mutex_destroy),
    mutexLock: Some(mutex_lock),
    mutexUnLock: Some(mutex_unlock),
    mutexTryLock: Some(mutex_try_lock),
};

// ---------------------------------------------------------------- message

/// Fixed-arity stand-in for the variadic `message` (module doc).
type MessageFixed = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *const c_char,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
) -> OfxStatus;
type MessageVariadic = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *const c_char,
    ...
) -> OfxStatus;

#[allow(clippy::too_many_arguments)]
unsafe fn post(
    kind: *const c_char,
    id: *const c_char,
    fmt: *const c_char,
    ints: [usize; 6],
    doubles: [f64; 8],
    persistent: bool,
) -> OfxStatus {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: NUL-terminated strings from the plugin.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let kind_s = text(kind);
    let kind_s = kind_s
        .strip_prefix("OfxMessage")
        .unwrap_or(&kind_s)
        .to_string();
    let body = if fmt.is_null() {
        String::new()
    } else {
        // SAFETY: the format is NUL-terminated.
        let f = unsafe { CStr::from_ptr(fmt) }.to_bytes();
        format_printf(
            f,
            VarArgs {
                ints: &ints,
                doubles: &doubles,
            },
        )
    };
    let question = kind_s == "Question";
    messages::record(Message {
        kind: kind_s,
        id: text(id),
        text: body,
        persistent,
    });
    // A batch host cannot ask anyone: questions are answered "no".
    if question {
        kOfxStatReplyNo
    } else {
        kOfxStatOK
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn message_fixed(
    _handle: *mut c_void,
    kind: *const c_char,
    id: *const c_char,
    fmt: *const c_char,
    i0: usize,
    i1: usize,
    i2: usize,
    i3: usize,
    i4: usize,
    i5: usize,
    d0: f64,
    d1: f64,
    d2: f64,
    d3: f64,
    d4: f64,
    d5: f64,
    d6: f64,
    d7: f64,
) -> OfxStatus {
    // SAFETY: arguments as the plugin passed them.
    unsafe {
        post(
            kind,
            id,
            fmt,
            [i0, i1, i2, i3, i4, i5],
            [d0, d1, d2, d3, d4, d5, d6, d7],
            false,
        )
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn persistent_message_fixed(
    _handle: *mut c_void,
    kind: *const c_char,
    id: *const c_char,
    fmt: *const c_char,
    i0: usize,
    i1: usize,
    i2: usize,
    i3: usize,
    i4: usize,
    i5: usize,
    d0: f64,
    d1: f64,
    d2: f64,
    d3: f64,
    d4: f64,
    d5: f64,
    d6: f64,
    d7: f64,
) -> OfxStatus {
    // SAFETY: arguments as the plugin passed them.
    unsafe {
        post(
            kind,
            id,
            fmt,
            [i0, i1, i2, i3, i4, i5],
            [d0, d1, d2, d3, d4, d5, d6, d7],
            true,
        )
    }
}

unsafe extern "C" fn clear_persistent_message(_handle: *mut c_void) -> OfxStatus {
    kOfxStatOK
}

// SAFETY (both transmutes): on x86-64 SysV a variadic call places arguments where this
// fixed-arity callee reads them (module doc).
const MESSAGE: MessageVariadic =
    unsafe { std::mem::transmute::<MessageFixed, MessageVariadic>(message_fixed) };
const PERSISTENT_MESSAGE: MessageVariadic =
    unsafe { std::mem::transmute::<MessageFixed, MessageVariadic>(persistent_message_fixed) };

/// The message suite, version 1.
pub static MESSAGE_SUITE_V1: OfxMessageSuiteV1 = OfxMessageSuiteV1 {
    message: Some(MESSAGE),
};

/// The message suite, version 2 (persistent messages).
pub static MESSAGE_SUITE_V2: OfxMessageSuiteV2 = OfxMessageSuiteV2 {
    message: Some(MESSAGE),
    setPersistentMessage: Some(PERSISTENT_MESSAGE),
    clearPersistentMessage: Some(clear_persistent_message),
};

// ---------------------------------------------------------------- progress

fn aborted(handle: *mut c_void) -> bool {
    // SAFETY: checked by magic.
    unsafe { Effect::from_handle(handle) }
        .and_then(|e| e.session())
        .is_some_and(|s| s.abort.load(Ordering::SeqCst))
}

unsafe extern "C" fn progress_start_v1(_h: *mut c_void, label: *const c_char) -> OfxStatus {
    if !label.is_null() {
        // SAFETY: NUL-terminated label.
        log::debug!("progress start: {:?}", unsafe { CStr::from_ptr(label) });
    }
    kOfxStatOK
}

unsafe extern "C" fn progress_start_v2(
    h: *mut c_void,
    label: *const c_char,
    _id: *const c_char,
) -> OfxStatus {
    // SAFETY: same contract as v1.
    unsafe { progress_start_v1(h, label) }
}

unsafe extern "C" fn progress_update(h: *mut c_void, p: f64) -> OfxStatus {
    log::trace!("progress {p}");
    // --abort-after-updates N: the user presses cancel during the N-th update.
    // SAFETY: checked by magic.
    if let Some(s) = unsafe { Effect::from_handle(h) }.and_then(|e| e.session()) {
        let n = s.progress_updates.fetch_add(1, Ordering::SeqCst) + 1;
        if s.abort_after_updates.is_some_and(|limit| n >= limit) {
            s.abort.store(true, Ordering::SeqCst);
        }
    }
    if aborted(h) {
        // "kOfxStatReplyNo if the progress should be cancelled".
        kOfxStatReplyNo
    } else {
        kOfxStatOK
    }
}

unsafe extern "C" fn progress_end(_h: *mut c_void) -> OfxStatus {
    kOfxStatOK
}

/// The progress suite, version 1.
pub static PROGRESS_SUITE_V1: OfxProgressSuiteV1 = OfxProgressSuiteV1 {
    progressStart: Some(progress_start_v1),
    progressUpdate: Some(progress_update),
    progressEnd: Some(progress_end),
};

/// The progress suite, version 2.
pub static PROGRESS_SUITE_V2: OfxProgressSuiteV2 = OfxProgressSuiteV2 {
    progressStart: Some(progress_start_v2),
    progressUpdate: Some(progress_update),
    progressEnd: Some(progress_end),
};

// ---------------------------------------------------------------- time line

unsafe extern "C" fn time_get(h: *mut c_void, t: *mut f64) -> OfxStatus {
    if t.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: checked by magic.
    let first = unsafe { Effect::from_handle(h) }
        .and_then(|e| e.session())
        .map_or(0.0, |s| s.range.0 as f64);
    // SAFETY: t checked non-null.
    unsafe { *t = current_render_time().unwrap_or(first) };
    kOfxStatOK
}

unsafe extern "C" fn time_goto(_h: *mut c_void, _t: f64) -> OfxStatus {
    // A batch host has no time line to move; the request is accepted and ignored.
    kOfxStatOK
}

unsafe extern "C" fn time_bounds(h: *mut c_void, a: *mut f64, b: *mut f64) -> OfxStatus {
    if a.is_null() || b.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: checked by magic.
    let Some(s) = (unsafe { Effect::from_handle(h) }).and_then(|e| e.session()) else {
        return kOfxStatErrBadHandle;
    };
    // SAFETY: checked non-null.
    unsafe {
        *a = s.range.0 as f64;
        *b = s.range.1 as f64;
    }
    kOfxStatOK
}

/// The time line suite.
pub static TIME_LINE_SUITE: OfxTimeLineSuiteV1 = OfxTimeLineSuiteV1 {
    getTime: Some(time_get),
    gotoTime: Some(time_goto),
    getTimeBounds: Some(time_bounds),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls the message suite through its variadic type, as a plugin does.
    #[test]
    fn variadic_message_is_formatted_and_recorded() {
        let st = unsafe {
            MESSAGE_SUITE_V2.message.unwrap()(
                std::ptr::null_mut(),
                kOfxMessageError.as_ptr(),
                c"id1".as_ptr(),
                c"model folder %s not found (%d, %.1f)".as_ptr(),
                c"/nope".as_ptr(),
                42 as c_int,
                2.5f64,
            )
        };
        assert_eq!(st, kOfxStatOK);
        let m = messages::messages();
        assert!(m.iter().any(|m| m.kind == "Error"
            && m.id == "id1"
            && m.text == "model folder /nope not found (42, 2.5)"));
    }

    #[test]
    fn recursive_mutex_and_threads() {
        let mut h: OfxMutexHandle = std::ptr::null_mut();
        let s = &MULTI_THREAD_SUITE;
        unsafe {
            assert_eq!(s.mutexCreate.unwrap()(&mut h, 1), kOfxStatOK);
            assert_eq!(s.mutexLock.unwrap()(h), kOfxStatOK);
            assert_eq!(s.mutexUnLock.unwrap()(h), kOfxStatOK);
            assert_eq!(s.mutexUnLock.unwrap()(h), kOfxStatOK);
            assert_eq!(s.mutexTryLock.unwrap()(h), kOfxStatOK);
            assert_eq!(s.mutexUnLock.unwrap()(h), kOfxStatOK);
        }
        static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        unsafe extern "C" fn work(i: c_uint, n: c_uint, arg: *mut c_void) {
            assert_eq!(n, 4);
            let mut idx = 99;
            unsafe { MULTI_THREAD_SUITE.multiThreadIndex.unwrap()(&mut idx) };
            assert_eq!(idx, i);
            assert_eq!(
                unsafe { MULTI_THREAD_SUITE.multiThreadIsSpawnedThread.unwrap()() },
                1
            );
            let m = arg as OfxMutexHandle;
            unsafe { MULTI_THREAD_SUITE.mutexLock.unwrap()(m) };
            SEEN.fetch_or(1 << i, Ordering::SeqCst);
            unsafe { MULTI_THREAD_SUITE.mutexUnLock.unwrap()(m) };
        }
        unsafe {
            assert_eq!(
                s.multiThread.unwrap()(Some(work), 4, h as *mut c_void),
                kOfxStatOK
            );
            assert_eq!(s.multiThreadIsSpawnedThread.unwrap()(), 0);
            assert_eq!(s.mutexDestroy.unwrap()(h), kOfxStatOK);
        }
        assert_eq!(SEEN.load(Ordering::SeqCst), 0b1111);
    }

    #[test]
    fn memory_and_fetch() {
        let mut p: *mut c_void = std::ptr::null_mut();
        unsafe {
            assert_eq!(
                MEMORY_SUITE.memoryAlloc.unwrap()(std::ptr::null_mut(), 1000, &mut p),
                kOfxStatOK
            );
            std::ptr::write_bytes(p as *mut u8, 7, 1000);
            assert_eq!(MEMORY_SUITE.memoryFree.unwrap()(p), kOfxStatOK);
        }
        let host = make_host(HostCaps { temporal: true });
        let fetch = unsafe { (*host).fetchSuite.unwrap() };
        let h = unsafe { (*host).host };
        for (name, v) in [
            (kOfxPropertySuite, 1),
            (kOfxImageEffectSuite, 1),
            (kOfxParameterSuite, 1),
            (kOfxMemorySuite, 1),
            (kOfxMultiThreadSuite, 1),
            (kOfxMessageSuite, 2),
            (kOfxProgressSuite, 2),
            (kOfxTimeLineSuite, 1),
        ] {
            assert!(!unsafe { fetch(h, name.as_ptr(), v) }.is_null(), "{name:?}");
        }
        assert!(unsafe { fetch(h, c"OfxInteractSuite".as_ptr(), 1) }.is_null());
    }
}
