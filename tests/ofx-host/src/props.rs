//! Property sets (the host side of `OfxPropertySetHandle`) and the OFX property suite.
//!
//! Every host object the plugin can see (host, effect descriptor/instance, clip, parameter,
//! image, action arguments) owns a [`PropertySet`]; its address is the handle the plugin gets.
//! Values are typed (int, double, string, pointer) and variable-length, as in the OFX
//! property model. Strings handed to the plugin stay valid for the lifetime of the set: old
//! values are parked in a graveyard rather than freed, because a plugin may still hold a
//! `char*` it read before another thread changed the property.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

use openfx::sys::generic::core::*;
use openfx::sys::generic::property::OfxPropertySuiteV1;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::status::check_magic;

/// Marks a live [`PropertySet`] so handles can be sanity-checked before use.
const PROPS_MAGIC: u64 = 0x4F46_5850_524F_5053;

/// One typed, variable-length property value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// `int` values (also booleans).
    Int(Vec<i32>),
    /// `double` values.
    Double(Vec<f64>),
    /// UTF-8 (or at least NUL-free) strings.
    Str(Vec<CString>),
    /// Opaque pointers, stored as addresses.
    Ptr(Vec<usize>),
}

impl PropValue {
    fn len(&self) -> usize {
        match self {
            PropValue::Int(v) => v.len(),
            PropValue::Double(v) => v.len(),
            PropValue::Str(v) => v.len(),
            PropValue::Ptr(v) => v.len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PropValue::Int(_) => "int",
            PropValue::Double(_) => "double",
            PropValue::Str(_) => "string",
            PropValue::Ptr(_) => "pointer",
        }
    }
}

/// Make a string property value; interior NULs (never expected in OFX names) are dropped.
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

#[derive(Default)]
struct PropMap {
    values: HashMap<CString, PropValue>,
    defaults: HashMap<CString, PropValue>,
    /// Old string values, kept alive because the plugin may still point into them.
    graveyard: Vec<CString>,
}

/// A host-owned OFX property set. Its address is the `OfxPropertySetHandle`.
#[repr(C)]
pub struct PropertySet {
    magic: u64,
    /// What this set describes (for error messages), e.g. "host", "clip Source".
    what: String,
    inner: Mutex<PropMap>,
}

impl std::fmt::Debug for PropertySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropertySet")
            .field("what", &self.what)
            .finish()
    }
}

impl PropertySet {
    /// An empty set describing `what`.
    pub fn new(what: impl Into<String>) -> Self {
        PropertySet {
            magic: PROPS_MAGIC,
            what: what.into(),
            inner: Mutex::new(PropMap::default()),
        }
    }

    /// What this set describes.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The handle the plugin sees.
    pub fn handle(&self) -> OfxPropertySetHandle {
        self as *const PropertySet as OfxPropertySetHandle
    }

    /// Resolve a handle to a set, checking it is one of ours.
    ///
    /// # Safety
    /// `h` must be null or point to memory the host handed out (a live set or stale handle).
    pub unsafe fn from_handle<'a>(h: OfxPropertySetHandle) -> Option<&'a PropertySet> {
        let p = h as *const PropertySet;
        // SAFETY: caller guarantees the pointer came from us; the magic check rejects others.
        if unsafe { check_magic(p as *const u64, PROPS_MAGIC) } {
            Some(unsafe { &*p })
        } else {
            None
        }
    }

    /// Define a property with a default value (what `propReset` restores).
    pub fn define(&self, name: &CStr, value: PropValue) {
        let mut m = self.inner.lock();
        m.defaults.insert(name.to_owned(), value.clone());
        if let Some(PropValue::Str(old)) = m.values.insert(name.to_owned(), value) {
            m.graveyard.extend(old);
        }
    }

    /// Set (or create) a property value.
    pub fn set(&self, name: &CStr, value: PropValue) {
        let mut m = self.inner.lock();
        if let Some(PropValue::Str(old)) = m.values.insert(name.to_owned(), value) {
            m.graveyard.extend(old);
        }
    }

    /// Define an int property.
    pub fn int(&self, name: &CStr, v: &[i32]) {
        self.define(name, PropValue::Int(v.to_vec()));
    }
    /// Define a double property.
    pub fn dbl(&self, name: &CStr, v: &[f64]) {
        self.define(name, PropValue::Double(v.to_vec()));
    }
    /// Define a string property.
    pub fn str(&self, name: &CStr, v: &[&str]) {
        self.define(name, PropValue::Str(v.iter().map(|s| cstring(s)).collect()));
    }
    /// Define a string property from C strings.
    pub fn cstr(&self, name: &CStr, v: &[&CStr]) {
        self.define(
            name,
            PropValue::Str(v.iter().map(|s| (*s).to_owned()).collect()),
        );
    }
    /// Define a pointer property.
    pub fn ptr(&self, name: &CStr, v: &[usize]) {
        self.define(name, PropValue::Ptr(v.to_vec()));
    }

    /// A copy of a property value.
    pub fn get(&self, name: &CStr) -> Option<PropValue> {
        self.inner.lock().values.get(name).cloned()
    }

    /// All ints of a property (empty if absent or not int).
    pub fn get_ints(&self, name: &CStr) -> Vec<i32> {
        match self.get(name) {
            Some(PropValue::Int(v)) => v,
            _ => Vec::new(),
        }
    }
    /// First int of a property.
    pub fn get_int(&self, name: &CStr) -> Option<i32> {
        self.get_ints(name).first().copied()
    }
    /// All doubles of a property (empty if absent or not double).
    pub fn get_doubles(&self, name: &CStr) -> Vec<f64> {
        match self.get(name) {
            Some(PropValue::Double(v)) => v,
            _ => Vec::new(),
        }
    }
    /// All strings of a property (empty if absent or not string).
    pub fn get_strings(&self, name: &CStr) -> Vec<String> {
        match self.get(name) {
            Some(PropValue::Str(v)) => v.iter().map(|s| s.to_string_lossy().into_owned()).collect(),
            _ => Vec::new(),
        }
    }
    /// First string of a property.
    pub fn get_string(&self, name: &CStr) -> Option<String> {
        self.get_strings(name).into_iter().next()
    }

    /// Copy every value (and default) of `other` into this set.
    pub fn copy_from(&self, other: &PropertySet) {
        let src = other.inner.lock();
        let values: Vec<(CString, PropValue)> = src
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let defaults: Vec<(CString, PropValue)> = src
            .defaults
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        drop(src);
        let mut m = self.inner.lock();
        m.defaults.extend(defaults);
        for (k, v) in values {
            if let Some(PropValue::Str(old)) = m.values.insert(k, v) {
                m.graveyard.extend(old);
            }
        }
    }

    /// Names of all properties (sorted), for diagnostics.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .lock()
            .values
            .keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Which typed accessor a suite call used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Double,
    Str,
    Ptr,
}

fn kind_matches(v: &PropValue, k: Kind) -> bool {
    matches!(
        (v, k),
        (PropValue::Int(_), Kind::Int)
            | (PropValue::Double(_), Kind::Double)
            | (PropValue::Str(_), Kind::Str)
            | (PropValue::Ptr(_), Kind::Ptr)
    )
}

fn empty_of(k: Kind) -> PropValue {
    match k {
        Kind::Int => PropValue::Int(Vec::new()),
        Kind::Double => PropValue::Double(Vec::new()),
        Kind::Str => PropValue::Str(Vec::new()),
        Kind::Ptr => PropValue::Ptr(Vec::new()),
    }
}

unsafe fn name_of<'a>(property: *const c_char) -> Option<&'a CStr> {
    if property.is_null() {
        None
    } else {
        // SAFETY: the plugin passes a NUL-terminated property name.
        Some(unsafe { CStr::from_ptr(property) })
    }
}

/// Set one element. Setting index == dimension appends (how plugins fill variable-length
/// properties such as supported contexts); a property the set does not know is created,
/// because the OFX spec lets plugins add properties hosts ignore.
fn set_one(
    set: &PropertySet,
    name: &CStr,
    index: c_int,
    kind: Kind,
    put: impl FnOnce(&mut PropValue, usize),
) -> OfxStatus {
    if index < 0 {
        return kOfxStatErrBadIndex;
    }
    let index = index as usize;
    let mut m = set.inner.lock();
    let m = &mut *m;
    let entry = m
        .values
        .entry(name.to_owned())
        .or_insert_with(|| empty_of(kind));
    if !kind_matches(entry, kind) {
        log::warn!(
            "plugin set {} property {:?} of {} with the wrong type",
            entry.kind(),
            name,
            set.what
        );
        return kOfxStatErrValue;
    }
    if index > entry.len() {
        // Pad the gap with zero values; plugins normally fill 0..n in order.
        pad(entry, index);
    }
    if let PropValue::Str(v) = entry {
        if index < v.len() {
            let old = std::mem::take(&mut v[index]);
            m.graveyard.push(old);
        }
    }
    put(entry, index);
    kOfxStatOK
}

fn pad(v: &mut PropValue, n: usize) {
    match v {
        PropValue::Int(v) => v.resize(n, 0),
        PropValue::Double(v) => v.resize(n, 0.0),
        PropValue::Str(v) => v.resize(n, CString::default()),
        PropValue::Ptr(v) => v.resize(n, 0),
    }
}

fn store<T>(v: &mut Vec<T>, index: usize, x: T) {
    if index < v.len() {
        v[index] = x;
    } else {
        v.push(x);
    }
}

/// One `--withhold` entry: a property the host pretends not to have.
#[derive(Debug)]
struct Withheld {
    /// Only sets whose description starts with this (e.g. `clip Source`, `host`); `None`: all.
    scope: Option<String>,
    name: CString,
    /// Reads refused so far.
    refused: AtomicUsize,
}

static WITHHELD: RwLock<Vec<Withheld>> = RwLock::new(Vec::new());

/// Withhold properties from the plugin (`--withhold`): every read of one through the property
/// suite (`propGet*`, `propGetDimension`) answers `kOfxStatErrUnknown`, as a host that does not
/// set it would (MLT and `kOfxImageEffectPropFrameRange`). `SCOPE:NAME` limits `NAME` to the
/// property sets whose description starts with `SCOPE` (`host`, `effect instance`,
/// `clip Source`, `image`, `render args`, `sequence args`, …). Writes are unaffected, and so is
/// the host's own use of its sets. Replaces any earlier list; an empty list withholds nothing.
pub fn set_withheld(specs: &[String]) {
    let list = specs
        .iter()
        .map(|spec| {
            let (scope, name) = match spec.rsplit_once(':') {
                Some((scope, name)) => (Some(scope.to_string()), name),
                None => (None, spec.as_str()),
            };
            Withheld {
                scope,
                name: cstring(name),
                refused: AtomicUsize::new(0),
            }
        })
        .collect();
    *WITHHELD.write() = list;
}

/// Each `--withhold` entry with the number of plugin reads it refused.
pub fn withheld_reads() -> Vec<(String, usize)> {
    WITHHELD
        .read()
        .iter()
        .map(|w| {
            let name = w.name.to_string_lossy();
            let spec = match &w.scope {
                Some(scope) => format!("{scope}:{name}"),
                None => name.into_owned(),
            };
            (spec, w.refused.load(Ordering::Relaxed))
        })
        .collect()
}

/// Whether the plugin's read of `name` on `set` is refused (and count it).
fn is_withheld(set: &PropertySet, name: &CStr) -> bool {
    let list = WITHHELD.read();
    let hit = list.iter().find(|w| {
        w.name.as_c_str() == name && w.scope.as_ref().is_none_or(|s| set.what.starts_with(s))
    });
    if let Some(w) = hit {
        w.refused.fetch_add(1, Ordering::Relaxed);
        log::debug!("withheld {name:?} from the plugin (on {})", set.what);
    }
    hit.is_some()
}

fn with_get(
    h: OfxPropertySetHandle,
    property: *const c_char,
    kind: Kind,
    f: impl FnOnce(&PropValue, &mut Vec<CString>) -> OfxStatus,
) -> OfxStatus {
    // SAFETY: handle comes from the plugin; from_handle checks it is one of ours.
    let Some(set) = (unsafe { PropertySet::from_handle(h) }) else {
        return kOfxStatErrBadHandle;
    };
    // SAFETY: property names are NUL-terminated C strings.
    let Some(name) = (unsafe { name_of(property) }) else {
        return kOfxStatErrUnknown;
    };
    if is_withheld(set, name) {
        return kOfxStatErrUnknown;
    }
    let mut m = set.inner.lock();
    let m = &mut *m;
    match m.values.get(name) {
        None => kOfxStatErrUnknown,
        Some(v) if !kind_matches(v, kind) => kOfxStatErrValue,
        Some(v) => f(v, &mut m.graveyard),
    }
}

fn with_set(
    h: OfxPropertySetHandle,
    property: *const c_char,
) -> Result<(&'static PropertySet, &'static CStr), OfxStatus> {
    // SAFETY: handle comes from the plugin; from_handle checks it is one of ours.
    let set = unsafe { PropertySet::from_handle(h) }.ok_or(kOfxStatErrBadHandle)?;
    // SAFETY: property names are NUL-terminated C strings.
    let name = unsafe { name_of(property) }.ok_or(kOfxStatErrUnknown)?;
    Ok((set, name))
}

unsafe extern "C" fn prop_set_pointer(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    v: *mut c_void,
) -> OfxStatus {
    match with_set(h, p) {
        Ok((s, n)) => set_one(s, n, i, Kind::Ptr, |e, i| {
            if let PropValue::Ptr(x) = e {
                store(x, i, v as usize)
            }
        }),
        Err(st) => st,
    }
}

unsafe extern "C" fn prop_set_string(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    v: *const c_char,
) -> OfxStatus {
    if v.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: the plugin passes a NUL-terminated string.
    let val = unsafe { CStr::from_ptr(v) }.to_owned();
    match with_set(h, p) {
        Ok((s, n)) => set_one(s, n, i, Kind::Str, |e, i| {
            if let PropValue::Str(x) = e {
                store(x, i, val)
            }
        }),
        Err(st) => st,
    }
}

unsafe extern "C" fn prop_set_double(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    v: f64,
) -> OfxStatus {
    match with_set(h, p) {
        Ok((s, n)) => set_one(s, n, i, Kind::Double, |e, i| {
            if let PropValue::Double(x) = e {
                store(x, i, v)
            }
        }),
        Err(st) => st,
    }
}

unsafe extern "C" fn prop_set_int(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    v: c_int,
) -> OfxStatus {
    match with_set(h, p) {
        Ok((s, n)) => set_one(s, n, i, Kind::Int, |e, i| {
            if let PropValue::Int(x) = e {
                store(x, i, v)
            }
        }),
        Err(st) => st,
    }
}

/// Replace a whole property with `count` values.
fn set_n(h: OfxPropertySetHandle, p: *const c_char, count: c_int, value: PropValue) -> OfxStatus {
    if count < 0 {
        return kOfxStatErrBadIndex;
    }
    match with_set(h, p) {
        Ok((s, n)) => {
            let mut m = s.inner.lock();
            if let Some(old) = m.values.get(n) {
                if std::mem::discriminant(old) != std::mem::discriminant(&value) {
                    return kOfxStatErrValue;
                }
            }
            if let Some(PropValue::Str(old)) = m.values.insert(n.to_owned(), value) {
                m.graveyard.extend(old);
            }
            kOfxStatOK
        }
        Err(st) => st,
    }
}

/// Read `count` elements from a plugin array.
///
/// # Safety
/// `v` must point to `count` readable elements (or be null with `count == 0`).
unsafe fn read_array<T: Copy>(v: *const T, count: c_int) -> Option<Vec<T>> {
    if count == 0 {
        return Some(Vec::new());
    }
    if v.is_null() || count < 0 {
        return None;
    }
    // SAFETY: per the function contract.
    Some(unsafe { std::slice::from_raw_parts(v, count as usize) }.to_vec())
}

unsafe extern "C" fn prop_set_pointer_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    v: *const *mut c_void,
) -> OfxStatus {
    // SAFETY: the plugin passes `c` pointers.
    match unsafe { read_array(v, c) } {
        Some(x) => set_n(
            h,
            p,
            c,
            PropValue::Ptr(x.into_iter().map(|q| q as usize).collect()),
        ),
        None => kOfxStatErrValue,
    }
}

unsafe extern "C" fn prop_set_string_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    v: *const *const c_char,
) -> OfxStatus {
    // SAFETY: the plugin passes `c` string pointers.
    let Some(ptrs) = (unsafe { read_array(v, c) }) else {
        return kOfxStatErrValue;
    };
    let mut strs = Vec::with_capacity(ptrs.len());
    for q in ptrs {
        if q.is_null() {
            return kOfxStatErrValue;
        }
        // SAFETY: each is a NUL-terminated string.
        strs.push(unsafe { CStr::from_ptr(q) }.to_owned());
    }
    set_n(h, p, c, PropValue::Str(strs))
}

unsafe extern "C" fn prop_set_double_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    v: *const f64,
) -> OfxStatus {
    // SAFETY: the plugin passes `c` doubles.
    match unsafe { read_array(v, c) } {
        Some(x) => set_n(h, p, c, PropValue::Double(x)),
        None => kOfxStatErrValue,
    }
}

unsafe extern "C" fn prop_set_int_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    v: *const c_int,
) -> OfxStatus {
    // SAFETY: the plugin passes `c` ints.
    match unsafe { read_array(v, c) } {
        Some(x) => set_n(h, p, c, PropValue::Int(x)),
        None => kOfxStatErrValue,
    }
}

unsafe extern "C" fn prop_get_pointer(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    out: *mut *mut c_void,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    with_get(h, p, Kind::Ptr, |v, _| match v {
        PropValue::Ptr(x) => match usize::try_from(i).ok().and_then(|i| x.get(i)) {
            Some(q) => {
                // SAFETY: out checked non-null.
                unsafe { *out = *q as *mut c_void };
                kOfxStatOK
            }
            None => kOfxStatErrBadIndex,
        },
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_string(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    out: *mut *mut c_char,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    with_get(h, p, Kind::Str, |v, _| match v {
        PropValue::Str(x) => match usize::try_from(i).ok().and_then(|i| x.get(i)) {
            Some(s) => {
                // SAFETY: out checked non-null; the CString lives as long as the set
                // (replaced values go to the graveyard, never freed early).
                unsafe { *out = s.as_ptr() as *mut c_char };
                kOfxStatOK
            }
            None => kOfxStatErrBadIndex,
        },
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_double(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    out: *mut f64,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    with_get(h, p, Kind::Double, |v, _| match v {
        PropValue::Double(x) => match usize::try_from(i).ok().and_then(|i| x.get(i)) {
            Some(d) => {
                // SAFETY: out checked non-null.
                unsafe { *out = *d };
                kOfxStatOK
            }
            None => kOfxStatErrBadIndex,
        },
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_int(
    h: OfxPropertySetHandle,
    p: *const c_char,
    i: c_int,
    out: *mut c_int,
) -> OfxStatus {
    if out.is_null() {
        return kOfxStatErrValue;
    }
    with_get(h, p, Kind::Int, |v, _| match v {
        PropValue::Int(x) => match usize::try_from(i).ok().and_then(|i| x.get(i)) {
            Some(d) => {
                // SAFETY: out checked non-null.
                unsafe { *out = *d };
                kOfxStatOK
            }
            None => kOfxStatErrBadIndex,
        },
        _ => kOfxStatErrValue,
    })
}

/// Copy the first `count` elements into a plugin array.
fn get_n<T: Copy>(src: &[T], count: c_int, out: *mut T) -> OfxStatus {
    if count < 0 || count as usize > src.len() {
        return kOfxStatErrBadIndex;
    }
    if count == 0 {
        return kOfxStatOK;
    }
    if out.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: the plugin provides room for `count` elements.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out, count as usize) };
    kOfxStatOK
}

unsafe extern "C" fn prop_get_pointer_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    out: *mut *mut c_void,
) -> OfxStatus {
    with_get(h, p, Kind::Ptr, |v, _| match v {
        PropValue::Ptr(x) => {
            let ptrs: Vec<*mut c_void> = x.iter().map(|q| *q as *mut c_void).collect();
            get_n(&ptrs, c, out)
        }
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_string_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    out: *mut *mut c_char,
) -> OfxStatus {
    with_get(h, p, Kind::Str, |v, _| match v {
        PropValue::Str(x) => {
            let ptrs: Vec<*mut c_char> = x.iter().map(|s| s.as_ptr() as *mut c_char).collect();
            get_n(&ptrs, c, out)
        }
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_double_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    out: *mut f64,
) -> OfxStatus {
    with_get(h, p, Kind::Double, |v, _| match v {
        PropValue::Double(x) => get_n(x, c, out),
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_get_int_n(
    h: OfxPropertySetHandle,
    p: *const c_char,
    c: c_int,
    out: *mut c_int,
) -> OfxStatus {
    with_get(h, p, Kind::Int, |v, _| match v {
        PropValue::Int(x) => get_n(x, c, out),
        _ => kOfxStatErrValue,
    })
}

unsafe extern "C" fn prop_reset(h: OfxPropertySetHandle, p: *const c_char) -> OfxStatus {
    match with_set(h, p) {
        Ok((s, n)) => {
            let mut m = s.inner.lock();
            let Some(d) = m.defaults.get(n).cloned() else {
                return kOfxStatErrUnknown;
            };
            if let Some(PropValue::Str(old)) = m.values.insert(n.to_owned(), d) {
                m.graveyard.extend(old);
            }
            kOfxStatOK
        }
        Err(st) => st,
    }
}

unsafe extern "C" fn prop_get_dimension(
    h: OfxPropertySetHandle,
    p: *const c_char,
    count: *mut c_int,
) -> OfxStatus {
    if count.is_null() {
        return kOfxStatErrValue;
    }
    match with_set(h, p) {
        Ok((s, n)) if is_withheld(s, n) => kOfxStatErrUnknown,
        Ok((s, n)) => match s.inner.lock().values.get(n) {
            Some(v) => {
                // SAFETY: count checked non-null.
                unsafe { *count = v.len() as c_int };
                kOfxStatOK
            }
            None => kOfxStatErrUnknown,
        },
        Err(st) => st,
    }
}

/// The property suite handed to plugins.
pub static PROPERTY_SUITE: OfxPropertySuiteV1 = OfxPropertySuiteV1 {
    propSetPointer: Some(prop_set_pointer),
    propSetString: Some(prop_set_string),
    propSetDouble: Some(prop_set_double),
    propSetInt: Some(prop_set_int),
    propSetPointerN: Some(prop_set_pointer_n),
    propSetStringN: Some(prop_set_string_n),
    propSetDoubleN: Some(prop_set_double_n),
    propSetIntN: Some(prop_set_int_n),
    propGetPointer: Some(prop_get_pointer),
    propGetString: Some(prop_get_string),
    propGetDouble: Some(prop_get_double),
    propGetInt: Some(prop_get_int),
    propGetPointerN: Some(prop_get_pointer_n),
    propGetStringN: Some(prop_get_string_n),
    propGetDoubleN: Some(prop_get_double_n),
    propGetIntN: Some(prop_get_int_n),
    propReset: Some(prop_reset),
    propGetDimension: Some(prop_get_dimension),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn suite() -> &'static OfxPropertySuiteV1 {
        &PROPERTY_SUITE
    }

    #[test]
    fn set_get_dimension_reset_through_the_suite() {
        let s = PropertySet::new("test");
        s.int(c"a", &[1, 2]);
        let h = s.handle();
        let su = suite();
        unsafe {
            let mut v = 0;
            assert_eq!(
                su.propGetInt.unwrap()(h, c"a".as_ptr(), 1, &mut v),
                kOfxStatOK
            );
            assert_eq!(v, 2);
            assert_eq!(
                su.propGetInt.unwrap()(h, c"a".as_ptr(), 2, &mut v),
                kOfxStatErrBadIndex
            );
            assert_eq!(su.propSetInt.unwrap()(h, c"a".as_ptr(), 2, 7), kOfxStatOK);
            let mut n = 0;
            assert_eq!(
                su.propGetDimension.unwrap()(h, c"a".as_ptr(), &mut n),
                kOfxStatOK
            );
            assert_eq!(n, 3);
            let mut all = [0; 3];
            assert_eq!(
                su.propGetIntN.unwrap()(h, c"a".as_ptr(), 3, all.as_mut_ptr()),
                kOfxStatOK
            );
            assert_eq!(all, [1, 2, 7]);
            assert_eq!(su.propReset.unwrap()(h, c"a".as_ptr()), kOfxStatOK);
            assert_eq!(s.get_ints(c"a"), vec![1, 2]);
            let mut d = 0.0;
            assert_eq!(
                su.propGetDouble.unwrap()(h, c"a".as_ptr(), 0, &mut d),
                kOfxStatErrValue
            );
            assert_eq!(
                su.propGetDouble.unwrap()(h, c"zz".as_ptr(), 0, &mut d),
                kOfxStatErrUnknown
            );
            assert_eq!(
                su.propSetDouble.unwrap()(h, c"a".as_ptr(), 0, 1.0),
                kOfxStatErrValue
            );
        }
    }

    #[test]
    fn strings_stay_valid_after_overwrite() {
        let s = PropertySet::new("test");
        s.str(c"s", &["first"]);
        let h = s.handle();
        unsafe {
            let mut p: *mut c_char = std::ptr::null_mut();
            assert_eq!(
                suite().propGetString.unwrap()(h, c"s".as_ptr(), 0, &mut p),
                kOfxStatOK
            );
            assert_eq!(
                suite().propSetString.unwrap()(h, c"s".as_ptr(), 0, c"second".as_ptr()),
                kOfxStatOK
            );
            assert_eq!(CStr::from_ptr(p).to_str().unwrap(), "first");
            let strs = [c"x".as_ptr(), c"y".as_ptr()];
            assert_eq!(
                suite().propSetStringN.unwrap()(h, c"s".as_ptr(), 2, strs.as_ptr()),
                kOfxStatOK
            );
        }
        assert_eq!(s.get_strings(c"s"), vec!["x".to_string(), "y".to_string()]);
    }

    #[test]
    fn withheld_properties_read_as_unknown_in_their_scope() {
        let clip = PropertySet::new("clip Source");
        let effect = PropertySet::new("effect instance");
        for s in [&clip, &effect] {
            s.dbl(c"range", &[0.0, 9.0]);
            s.int(c"depth", &[1]);
        }
        set_withheld(&["clip Source:range".to_string(), "depth".to_string()]);
        let su = suite();
        unsafe {
            let mut d = 0.0;
            let mut n = 0;
            assert_eq!(
                su.propGetDouble.unwrap()(clip.handle(), c"range".as_ptr(), 0, &mut d),
                kOfxStatErrUnknown
            );
            assert_eq!(
                su.propGetDimension.unwrap()(clip.handle(), c"range".as_ptr(), &mut n),
                kOfxStatErrUnknown
            );
            assert_eq!(
                su.propGetDouble.unwrap()(effect.handle(), c"range".as_ptr(), 1, &mut d),
                kOfxStatOK
            );
            assert_eq!(d, 9.0);
            assert_eq!(
                su.propGetInt.unwrap()(effect.handle(), c"depth".as_ptr(), 0, &mut n),
                kOfxStatErrUnknown
            );
            assert_eq!(
                su.propSetInt.unwrap()(effect.handle(), c"depth".as_ptr(), 0, 4),
                kOfxStatOK
            );
        }
        assert_eq!(
            effect.get_int(c"depth"),
            Some(4),
            "the host still reads its own sets"
        );
        assert_eq!(
            withheld_reads(),
            vec![
                ("clip Source:range".to_string(), 2),
                ("depth".to_string(), 1)
            ]
        );
        set_withheld(&[]);
        assert!(withheld_reads().is_empty());
    }

    #[test]
    fn bad_handle_is_rejected() {
        let x = [0u64; 8];
        let h = x.as_ptr() as OfxPropertySetHandle;
        let mut v = 0;
        let st = unsafe { suite().propGetInt.unwrap()(h, c"a".as_ptr(), 0, &mut v) };
        assert_eq!(st, kOfxStatErrBadHandle);
        let st =
            unsafe { suite().propGetInt.unwrap()(std::ptr::null_mut(), c"a".as_ptr(), 0, &mut v) };
        assert_eq!(st, kOfxStatErrBadHandle);
    }
}
