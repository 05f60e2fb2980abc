//! OFX status codes as names, and the handle sanity check shared by every suite.

// The OFX C names are matched as constants in patterns.
#![allow(non_upper_case_globals)]

use openfx::sys::generic::core::*;

/// The symbolic name of an OFX status, e.g. `kOfxStatFailed`.
pub fn status_name(st: OfxStatus) -> String {
    let name = match st {
        kOfxStatOK => "kOfxStatOK",
        kOfxStatFailed => "kOfxStatFailed",
        kOfxStatErrFatal => "kOfxStatErrFatal",
        kOfxStatErrUnknown => "kOfxStatErrUnknown",
        kOfxStatErrMissingHostFeature => "kOfxStatErrMissingHostFeature",
        kOfxStatErrUnsupported => "kOfxStatErrUnsupported",
        kOfxStatErrExists => "kOfxStatErrExists",
        kOfxStatErrFormat => "kOfxStatErrFormat",
        kOfxStatErrMemory => "kOfxStatErrMemory",
        kOfxStatErrBadHandle => "kOfxStatErrBadHandle",
        kOfxStatErrBadIndex => "kOfxStatErrBadIndex",
        kOfxStatErrValue => "kOfxStatErrValue",
        kOfxStatReplyYes => "kOfxStatReplyYes",
        kOfxStatReplyNo => "kOfxStatReplyNo",
        kOfxStatReplyDefault => "kOfxStatReplyDefault",
        kOfxStatUnlicensed => "kOfxStatUnlicensed",
        other => return format!("unknown status {other}"),
    };
    name.to_string()
}

/// Whether `st` is a status the OFX spec allows as the answer to `action`.
///
/// Every action may fail (`Failed`, `ErrFatal`, `ErrMemory`); the "reply" statuses are only
/// meaningful where the spec lists them. Resolve's Fusion page rejects out-of-spec answers, so
/// the test host does too (hosts.md, GetFramesNeeded row).
pub fn status_allowed(action: &str, st: OfxStatus) -> bool {
    if matches!(
        st,
        kOfxStatOK | kOfxStatFailed | kOfxStatErrFatal | kOfxStatErrMemory
    ) {
        return true;
    }
    match action {
        "OfxActionLoad" => matches!(st, kOfxStatReplyDefault | kOfxStatErrMissingHostFeature),
        "OfxActionDescribe" | "OfxImageEffectActionDescribeInContext" => {
            matches!(st, kOfxStatErrMissingHostFeature)
        }
        "OfxActionCreateInstance" => {
            matches!(st, kOfxStatReplyDefault | kOfxStatErrMissingHostFeature)
        }
        // Render must either do the work or fail; a "default" render is meaningless.
        "OfxImageEffectActionRender" => false,
        _ => st == kOfxStatReplyDefault,
    }
}

/// Whether `st` counts as success (`OK` or `ReplyDefault`).
pub fn is_success(st: OfxStatus) -> bool {
    st == kOfxStatOK || st == kOfxStatReplyDefault
}

/// Check that `p` points at a live host object by reading its leading magic word.
///
/// # Safety
/// `p` must be null or point to at least 8 readable bytes (any handle the host handed out).
pub unsafe fn check_magic(p: *const u64, magic: u64) -> bool {
    if p.is_null() || !(p as usize).is_multiple_of(std::mem::align_of::<u64>()) {
        return false;
    }
    // SAFETY: per the contract, p points to readable memory; the value decides validity.
    unsafe { std::ptr::read_volatile(p) == magic }
}
