//! Parameters: parameter sets and parameters (descriptor and instance), their values, and the
//! OFX parameter suite.
//!
//! `paramGetValue`, `paramSetValue` and their `AtTime`/derivative/integral variants are C
//! variadic functions. Stable Rust cannot define a variadic function, so they are defined here
//! as plain `extern "C"` functions with enough trailing integer/pointer and `f64` parameters,
//! then cast to the variadic pointer type. On x86-64 System V a variadic call passes its
//! arguments exactly like a non-variadic one (integers and pointers in rdi, rsi, rdx, rcx, r8,
//! r9; doubles in xmm0-7, each class counted separately), so the callee finds them where it
//! expects. **This host is therefore x86-64 Linux only** (`compile_error!` elsewhere, lib.rs).
//! No OFX value call needs more than 4 pointers or 4 doubles, which all fit in registers.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use openfx::sys::generic::core::*;
use openfx::sys::image_effect_v1::param::*;
use parking_lot::Mutex;

use crate::props::{cstring, PropValue, PropertySet};
use crate::status::check_magic;

const PARAM_MAGIC: u64 = 0x4F46_5850_4152_414D;
const PARAMSET_MAGIC: u64 = 0x4F46_5850_5345_5453;

/// The value shape of a parameter type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `n` ints (integer, boolean, choice, integer 2D/3D).
    Ints(usize),
    /// `n` doubles (double, 2D/3D, RGB, RGBA).
    Doubles(usize),
    /// One string (string, custom, string choice).
    Str,
    /// No value (group, page, push button, bytes).
    None,
}

/// The value shape of an OFX parameter type string, or `None` for unsupported types.
pub fn shape_of(kind: &CStr) -> Option<Shape> {
    let k = kind.to_bytes();
    let is = |c: &CStr| c.to_bytes() == k;
    let shape = if is(kOfxParamTypeInteger) || is(kOfxParamTypeBoolean) || is(kOfxParamTypeChoice) {
        Shape::Ints(1)
    } else if is(kOfxParamTypeInteger2D) {
        Shape::Ints(2)
    } else if is(kOfxParamTypeInteger3D) {
        Shape::Ints(3)
    } else if is(kOfxParamTypeDouble) {
        Shape::Doubles(1)
    } else if is(kOfxParamTypeDouble2D) {
        Shape::Doubles(2)
    } else if is(kOfxParamTypeDouble3D) || is(kOfxParamTypeRGB) {
        Shape::Doubles(3)
    } else if is(kOfxParamTypeRGBA) {
        Shape::Doubles(4)
    } else if is(kOfxParamTypeString) || is(kOfxParamTypeCustom) || is(kOfxParamTypeStrChoice) {
        Shape::Str
    } else if is(kOfxParamTypeGroup)
        || is(kOfxParamTypePage)
        || is(kOfxParamTypePushButton)
        || is(kOfxParamTypeBytes)
    {
        Shape::None
    } else {
        return None;
    };
    Some(shape)
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// Integer-like values.
    Ints(Vec<i32>),
    /// Double-like values.
    Doubles(Vec<f64>),
    /// A string value.
    Str(CString),
    /// No value.
    None,
}

struct ValueCell {
    value: ParamValue,
    /// Old strings the plugin may still point into.
    graveyard: Vec<CString>,
}

/// A parameter (descriptor or instance). Its address is the `OfxParamHandle`.
#[repr(C)]
pub struct Param {
    magic: u64,
    /// Property set (`paramGetPropertySet`).
    pub props: PropertySet,
    /// Script name.
    pub name: String,
    /// OFX type string, e.g. `OfxParamTypeDouble`.
    pub kind: String,
    /// Value shape.
    pub shape: Shape,
    value: Mutex<ValueCell>,
    /// Reading the value fails with `kOfxStatErrMissingHostFeature` (a minimal host).
    reads_fail: bool,
}

impl Param {
    fn new(kind: &CStr, name: &str, shape: Shape) -> Box<Param> {
        let props = PropertySet::new(format!("param {name}"));
        props.cstr(kOfxPropType, &[kOfxTypeParameter]);
        props.cstr(kOfxParamPropType, &[kind]);
        props.str(kOfxPropName, &[name]);
        props.str(kOfxPropLabel, &[name]);
        props.str(kOfxPropShortLabel, &[name]);
        props.str(kOfxPropLongLabel, &[name]);
        props.str(kOfxParamPropScriptName, &[name]);
        props.str(kOfxParamPropHint, &[""]);
        props.str(kOfxParamPropParent, &[""]);
        props.int(kOfxParamPropSecret, &[0]);
        props.int(kOfxParamPropEnabled, &[1]);
        props.int(kOfxParamPropEvaluateOnChange, &[1]);
        props.int(kOfxParamPropPersistant, &[1]);
        props.int(kOfxParamPropCanUndo, &[1]);
        props.int(kOfxParamPropIsAnimating, &[0]);
        props.int(kOfxParamPropIsAutoKeying, &[0]);
        props.int(kOfxParamPropPluginMayWrite, &[0]);
        props.ptr(kOfxParamPropDataPtr, &[0]);
        props.str(
            kOfxParamPropCacheInvalidation,
            &["OfxParamInvalidateValueChange"],
        );
        let value = match shape {
            Shape::Ints(n) => {
                let animates = kind != kOfxParamTypeChoice && kind != kOfxParamTypeBoolean;
                props.int(kOfxParamPropAnimates, &[animates as i32]);
                props.int(kOfxParamPropDefault, &vec![0; n]);
                props.int(kOfxParamPropMin, &vec![i32::MIN; n]);
                props.int(kOfxParamPropMax, &vec![i32::MAX; n]);
                props.int(kOfxParamPropDisplayMin, &vec![i32::MIN; n]);
                props.int(kOfxParamPropDisplayMax, &vec![i32::MAX; n]);
                if kind == kOfxParamTypeChoice {
                    props.define(kOfxParamPropChoiceOption, PropValue::Str(Vec::new()));
                    props.define(kOfxParamPropChoiceOrder, PropValue::Int(Vec::new()));
                }
                ParamValue::Ints(vec![0; n])
            }
            Shape::Doubles(n) => {
                props.int(kOfxParamPropAnimates, &[1]);
                props.dbl(kOfxParamPropDefault, &vec![0.0; n]);
                props.dbl(kOfxParamPropMin, &vec![-f64::MAX; n]);
                props.dbl(kOfxParamPropMax, &vec![f64::MAX; n]);
                props.dbl(kOfxParamPropDisplayMin, &vec![-f64::MAX; n]);
                props.dbl(kOfxParamPropDisplayMax, &vec![f64::MAX; n]);
                props.dbl(kOfxParamPropIncrement, &[1.0]);
                props.int(kOfxParamPropDigits, &[2]);
                props.cstr(kOfxParamPropDoubleType, &[kOfxParamDoubleTypePlain]);
                ParamValue::Doubles(vec![0.0; n])
            }
            Shape::Str => {
                props.int(kOfxParamPropAnimates, &[0]);
                props.str(kOfxParamPropDefault, &[""]);
                props.cstr(kOfxParamPropStringMode, &[kOfxParamStringIsSingleLine]);
                props.int(kOfxParamPropStringFilePathExists, &[1]);
                if kind == kOfxParamTypeStrChoice {
                    props.define(kOfxParamPropChoiceOption, PropValue::Str(Vec::new()));
                    props.define(kOfxParamPropChoiceEnum, PropValue::Str(Vec::new()));
                }
                ParamValue::Str(CString::default())
            }
            Shape::None => {
                props.int(kOfxParamPropAnimates, &[0]);
                if kind == kOfxParamTypePage {
                    props.define(kOfxParamPropPageChild, PropValue::Str(Vec::new()));
                }
                if kind == kOfxParamTypeGroup {
                    props.int(kOfxParamPropGroupOpen, &[1]);
                }
                ParamValue::None
            }
        };
        Box::new(Param {
            magic: PARAM_MAGIC,
            props,
            name: name.to_string(),
            kind: kind.to_string_lossy().into_owned(),
            shape,
            value: Mutex::new(ValueCell {
                value,
                graveyard: Vec::new(),
            }),
            reads_fail: false,
        })
    }

    /// An instance parameter copied from a descriptor, its value set from the default.
    fn instance_of(desc: &Param, reads_fail: bool) -> Box<Param> {
        let ckind = cstring(&desc.kind);
        let mut p = Param::new(&ckind, &desc.name, desc.shape);
        p.reads_fail = reads_fail;
        p.props.copy_from(&desc.props);
        p.props.cstr(kOfxPropType, &[kOfxTypeParameterInstance]);
        let default = match (desc.shape, desc.props.get(kOfxParamPropDefault)) {
            (Shape::Ints(n), Some(PropValue::Int(v))) if v.len() >= n => {
                ParamValue::Ints(v[..n].to_vec())
            }
            (Shape::Doubles(n), Some(PropValue::Double(v))) if v.len() >= n => {
                ParamValue::Doubles(v[..n].to_vec())
            }
            (Shape::Str, Some(PropValue::Str(v))) => {
                ParamValue::Str(v.first().cloned().unwrap_or_default())
            }
            _ => p.value.lock().value.clone(),
        };
        p.value.lock().value = default;
        p
    }

    /// The handle the plugin sees.
    pub fn handle(&self) -> OfxParamHandle {
        self as *const Param as OfxParamHandle
    }

    /// Resolve a plugin handle.
    ///
    /// # Safety
    /// `h` must be null or a handle the host handed out.
    pub unsafe fn from_handle<'a>(h: OfxParamHandle) -> Option<&'a Param> {
        let p = h as *const Param;
        // SAFETY: per contract; the magic check rejects foreign pointers.
        if unsafe { check_magic(p as *const u64, PARAM_MAGIC) } {
            Some(unsafe { &*p })
        } else {
            None
        }
    }

    /// The current value.
    pub fn value(&self) -> ParamValue {
        self.value.lock().value.clone()
    }

    fn set(&self, v: ParamValue) {
        let mut cell = self.value.lock();
        if let ParamValue::Str(old) = std::mem::replace(&mut cell.value, v) {
            cell.graveyard.push(old);
        }
    }

    /// Choice options (labels), if any.
    pub fn options(&self) -> Vec<String> {
        self.props.get_strings(kOfxParamPropChoiceOption)
    }

    /// Set the value from command-line text.
    ///
    /// Ints/doubles are comma-separated; booleans take `1/0/true/false/on/off/yes/no`;
    /// choices take an index, an option label or a string-choice enum value; labels are
    /// compared case-insensitively ignoring punctuation (`overlap-linear` = `Overlap linear`).
    pub fn set_from_text(&self, text: &str) -> Result<(), String> {
        let value = match self.shape {
            Shape::Ints(n) => {
                if self.kind.as_bytes() == kOfxParamTypeBoolean.to_bytes() {
                    let b = match text.to_ascii_lowercase().as_str() {
                        "1" | "true" | "on" | "yes" => 1,
                        "0" | "false" | "off" | "no" => 0,
                        _ => return Err(format!("{}: {text:?} is not a boolean", self.name)),
                    };
                    ParamValue::Ints(vec![b])
                } else if self.kind.as_bytes() == kOfxParamTypeChoice.to_bytes() {
                    let options = self.options();
                    let idx = match text.parse::<i32>() {
                        Ok(i) if i >= 0 && (i as usize) < options.len().max(1) => i,
                        _ => options
                            .iter()
                            .position(|o| normalise(o) == normalise(text))
                            .map(|i| i as i32)
                            .ok_or_else(|| {
                                format!(
                                    "{}: {text:?} is not one of the options [{}]",
                                    self.name,
                                    options.join(", ")
                                )
                            })?,
                    };
                    ParamValue::Ints(vec![idx])
                } else {
                    let v = parse_list::<i32>(text, n).ok_or_else(|| {
                        format!("{}: expected {n} integer(s), got {text:?}", self.name)
                    })?;
                    ParamValue::Ints(v)
                }
            }
            Shape::Doubles(n) => {
                let v = parse_list::<f64>(text, n).ok_or_else(|| {
                    format!("{}: expected {n} number(s), got {text:?}", self.name)
                })?;
                ParamValue::Doubles(v)
            }
            Shape::Str => {
                let mut t = text.to_string();
                if self.kind.as_bytes() == kOfxParamTypeStrChoice.to_bytes() {
                    let enums = self.props.get_strings(kOfxParamPropChoiceEnum);
                    let options = self.options();
                    if let Some(e) = enums.iter().find(|e| normalise(e) == normalise(text)) {
                        t = e.clone();
                    } else if let Some(i) =
                        options.iter().position(|o| normalise(o) == normalise(text))
                    {
                        t = enums.get(i).cloned().unwrap_or(t);
                    } else {
                        return Err(format!(
                            "{}: {text:?} is not one of [{}]",
                            self.name,
                            enums.join(", ")
                        ));
                    }
                }
                ParamValue::Str(cstring(&t))
            }
            Shape::None => return Err(format!("{} ({}) has no value", self.name, self.kind)),
        };
        self.set(value);
        Ok(())
    }
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

fn parse_list<T: std::str::FromStr>(text: &str, n: usize) -> Option<Vec<T>> {
    let v: Vec<T> = text
        .split(',')
        .map(|s| s.trim().parse::<T>())
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == n).then_some(v)
}

/// A parameter set. Its address is the `OfxParamSetHandle`.
#[repr(C)]
pub struct ParamSet {
    magic: u64,
    /// Property set (`paramSetGetPropertySet`).
    pub props: PropertySet,
    // Boxed: a parameter's address is its OFX handle and must not move when the Vec grows.
    #[allow(clippy::vec_box)]
    params: Mutex<Vec<Box<Param>>>,
}

impl Default for ParamSet {
    fn default() -> Self {
        Self::new()
    }
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        let props = PropertySet::new("param set");
        props.define(kOfxPluginPropParamPageOrder, PropValue::Str(Vec::new()));
        ParamSet {
            magic: PARAMSET_MAGIC,
            props,
            params: Mutex::new(Vec::new()),
        }
    }

    /// The handle the plugin sees.
    pub fn handle(&self) -> OfxParamSetHandle {
        self as *const ParamSet as OfxParamSetHandle
    }

    /// Resolve a plugin handle.
    ///
    /// # Safety
    /// `h` must be null or a handle the host handed out.
    pub unsafe fn from_handle<'a>(h: OfxParamSetHandle) -> Option<&'a ParamSet> {
        let p = h as *const ParamSet;
        // SAFETY: per contract; the magic check rejects foreign pointers.
        if unsafe { check_magic(p as *const u64, PARAMSET_MAGIC) } {
            Some(unsafe { &*p })
        } else {
            None
        }
    }

    /// Instance parameters copied from a descriptor set.
    ///
    /// `minimal` emulates the OpenFX demo host's parameter support (HostSupport examples):
    /// string-valued parameters get no instance (`paramGetHandle` answers
    /// `kOfxStatErrUnknown`) and integer and choice values cannot be read
    /// (`kOfxStatErrMissingHostFeature`).
    pub fn instance_of(desc: &ParamSet, minimal: bool) -> ParamSet {
        let set = ParamSet::new();
        set.props.copy_from(&desc.props);
        let params = desc
            .params
            .lock()
            .iter()
            .filter(|p| !(minimal && p.shape == Shape::Str))
            .map(|p| {
                let int_like = p.kind.as_bytes() == kOfxParamTypeInteger.to_bytes()
                    || p.kind.as_bytes() == kOfxParamTypeChoice.to_bytes();
                Param::instance_of(p, minimal && int_like)
            })
            .collect();
        *set.params.lock() = params;
        set
    }

    /// Look up a parameter by script name. The reference stays valid while the set lives:
    /// parameters are boxed and never removed.
    pub fn get(&self, name: &str) -> Option<&Param> {
        let params = self.params.lock();
        let p = params.iter().find(|p| p.name == name)?;
        let ptr: *const Param = &**p;
        // SAFETY: boxed params are never removed or moved while the set lives.
        Some(unsafe { &*ptr })
    }

    /// Script names, in definition order.
    pub fn names(&self) -> Vec<String> {
        self.params.lock().iter().map(|p| p.name.clone()).collect()
    }

    /// Parameters with a value, for `--list-params`: (name, type, value, options).
    pub fn describe(&self) -> Vec<(String, String, ParamValue, Vec<String>)> {
        self.params
            .lock()
            .iter()
            .filter(|p| p.shape != Shape::None)
            .map(|p| (p.name.clone(), p.kind.clone(), p.value(), p.options()))
            .collect()
    }

    fn define(&self, kind: &CStr, name: &str) -> Result<&Param, OfxStatus> {
        let shape = shape_of(kind).ok_or(kOfxStatErrUnsupported)?;
        let mut params = self.params.lock();
        if params.iter().any(|p| p.name == name) {
            return Err(kOfxStatErrExists);
        }
        params.push(Param::new(kind, name, shape));
        let ptr: *const Param = params.last().map(|b| &**b).ok_or(kOfxStatErrFatal)?;
        // SAFETY: boxed params are never removed or moved while the set lives.
        Ok(unsafe { &*ptr })
    }
}

unsafe fn cstr_arg<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: plugin passes NUL-terminated strings.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

unsafe extern "C" fn param_define(
    set: OfxParamSetHandle,
    kind: *const c_char,
    name: *const c_char,
    props: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handles come from the host; checked by magic.
    let Some(set) = (unsafe { ParamSet::from_handle(set) }) else {
        return kOfxStatErrBadHandle;
    };
    // SAFETY: strings from the plugin.
    let (Some(kind), Some(name)) = (unsafe { cstr_arg(kind) }, unsafe { cstr_arg(name) }) else {
        return kOfxStatErrValue;
    };
    match set.define(kind, &name.to_string_lossy()) {
        Ok(p) => {
            if !props.is_null() {
                // SAFETY: out pointer checked non-null.
                unsafe { *props = p.props.handle() };
            }
            kOfxStatOK
        }
        Err(st) => {
            log::warn!("paramDefine({kind:?}, {name:?}) refused: {st}");
            st
        }
    }
}

unsafe extern "C" fn param_get_handle(
    set: OfxParamSetHandle,
    name: *const c_char,
    param: *mut OfxParamHandle,
    props: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(set) = (unsafe { ParamSet::from_handle(set) }) else {
        return kOfxStatErrBadHandle;
    };
    // SAFETY: string from the plugin.
    let Some(name) = (unsafe { cstr_arg(name) }) else {
        return kOfxStatErrValue;
    };
    let Some(p) = set.get(&name.to_string_lossy()) else {
        return kOfxStatErrUnknown;
    };
    if !param.is_null() {
        // SAFETY: out pointer checked non-null.
        unsafe { *param = p.handle() };
    }
    if !props.is_null() {
        // SAFETY: out pointer checked non-null.
        unsafe { *props = p.props.handle() };
    }
    kOfxStatOK
}

unsafe extern "C" fn param_set_get_property_set(
    set: OfxParamSetHandle,
    props: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(set) = (unsafe { ParamSet::from_handle(set) }) else {
        return kOfxStatErrBadHandle;
    };
    if props.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out pointer checked non-null.
    unsafe { *props = set.props.handle() };
    kOfxStatOK
}

unsafe extern "C" fn param_get_property_set(
    param: OfxParamHandle,
    props: *mut OfxPropertySetHandle,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    let Some(p) = (unsafe { Param::from_handle(param) }) else {
        return kOfxStatErrBadHandle;
    };
    if props.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out pointer checked non-null.
    unsafe { *props = p.props.handle() };
    kOfxStatOK
}

/// Write a value through the plugin's out-pointers (`int*`, `double*` or `char**`).
fn write_value(p: &Param, outs: [*mut c_void; 4], scale: Option<f64>) -> OfxStatus {
    if p.reads_fail {
        return kOfxStatErrMissingHostFeature;
    }
    let cell = p.value.lock();
    match &cell.value {
        ParamValue::Ints(v) => {
            for (i, x) in v.iter().enumerate() {
                let o = outs[i] as *mut c_int;
                if o.is_null() {
                    return kOfxStatErrValue;
                }
                let x = match scale {
                    Some(s) => (*x as f64 * s).round() as c_int,
                    None => *x,
                };
                // SAFETY: the plugin passed one int* per dimension.
                unsafe { o.write(x) };
            }
        }
        ParamValue::Doubles(v) => {
            for (i, x) in v.iter().enumerate() {
                let o = outs[i] as *mut f64;
                if o.is_null() {
                    return kOfxStatErrValue;
                }
                // SAFETY: the plugin passed one double* per dimension.
                unsafe { o.write(scale.map_or(*x, |s| x * s)) };
            }
        }
        ParamValue::Str(s) => {
            let o = outs[0] as *mut *const c_char;
            if o.is_null() {
                return kOfxStatErrValue;
            }
            // SAFETY: the plugin passed a char**; the string outlives the set's strings
            // (old values go to the graveyard).
            unsafe { o.write(s.as_ptr()) };
        }
        ParamValue::None => return kOfxStatErrUnsupported,
    }
    kOfxStatOK
}

unsafe extern "C" fn param_get_value(
    param: OfxParamHandle,
    a: *mut c_void,
    b: *mut c_void,
    c: *mut c_void,
    d: *mut c_void,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) => write_value(p, [a, b, c, d], None),
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn param_get_value_at_time(
    param: OfxParamHandle,
    _time: OfxTime,
    a: *mut c_void,
    b: *mut c_void,
    c: *mut c_void,
    d: *mut c_void,
) -> OfxStatus {
    // No animation: the value is the same at every time.
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) => write_value(p, [a, b, c, d], None),
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn param_get_derivative(
    param: OfxParamHandle,
    _time: OfxTime,
    a: *mut c_void,
    b: *mut c_void,
    c: *mut c_void,
    d: *mut c_void,
) -> OfxStatus {
    // Constant curves: the derivative is zero.
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) if matches!(p.shape, Shape::Doubles(_)) => write_value(p, [a, b, c, d], Some(0.0)),
        Some(_) => kOfxStatErrUnsupported,
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn param_get_integral(
    param: OfxParamHandle,
    t1: OfxTime,
    t2: OfxTime,
    a: *mut c_void,
    b: *mut c_void,
    c: *mut c_void,
    d: *mut c_void,
) -> OfxStatus {
    // Constant curves: the integral is value * (t2 - t1).
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) if matches!(p.shape, Shape::Doubles(_)) => {
            write_value(p, [a, b, c, d], Some(t2 - t1))
        }
        Some(_) => kOfxStatErrUnsupported,
        None => kOfxStatErrBadHandle,
    }
}

/// Store a value passed by value in a variadic call: ints/pointers arrive in `ints`,
/// doubles in `doubles` (see the module doc).
fn read_value(p: &Param, ints: [usize; 3], doubles: [f64; 4]) -> OfxStatus {
    let v = match p.shape {
        // C promotes int varargs to int; the upper half of the register is garbage.
        Shape::Ints(n) => ParamValue::Ints(ints[..n].iter().map(|x| *x as u32 as i32).collect()),
        Shape::Doubles(n) => ParamValue::Doubles(doubles[..n].to_vec()),
        Shape::Str => {
            let s = ints[0] as *const c_char;
            if s.is_null() {
                return kOfxStatErrValue;
            }
            // SAFETY: a string param's set takes a NUL-terminated char*.
            ParamValue::Str(unsafe { CStr::from_ptr(s) }.to_owned())
        }
        Shape::None => return kOfxStatErrUnsupported,
    };
    p.set(v);
    kOfxStatOK
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn param_set_value(
    param: OfxParamHandle,
    i0: usize,
    i1: usize,
    i2: usize,
    d0: f64,
    d1: f64,
    d2: f64,
    d3: f64,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) => read_value(p, [i0, i1, i2], [d0, d1, d2, d3]),
        None => kOfxStatErrBadHandle,
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn param_set_value_at_time(
    param: OfxParamHandle,
    _time: OfxTime,
    i0: usize,
    i1: usize,
    i2: usize,
    d0: f64,
    d1: f64,
    d2: f64,
    d3: f64,
) -> OfxStatus {
    // No animation: setting at a time sets the constant value.
    // SAFETY: handle checked by magic.
    match unsafe { Param::from_handle(param) } {
        Some(p) => read_value(p, [i0, i1, i2], [d0, d1, d2, d3]),
        None => kOfxStatErrBadHandle,
    }
}

unsafe extern "C" fn param_get_num_keys(param: OfxParamHandle, n: *mut c_uint) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { Param::from_handle(param) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    if n.is_null() {
        return kOfxStatErrValue;
    }
    // SAFETY: out pointer checked non-null. No animation: no keys.
    unsafe { *n = 0 };
    kOfxStatOK
}

unsafe extern "C" fn param_get_key_time(
    param: OfxParamHandle,
    _nth: c_uint,
    _time: *mut OfxTime,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { Param::from_handle(param) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    kOfxStatErrBadIndex
}

unsafe extern "C" fn param_get_key_index(
    param: OfxParamHandle,
    _time: OfxTime,
    _direction: c_int,
    _index: *mut c_int,
) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { Param::from_handle(param) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    // "kOfxStatFailed if there is no key in that direction".
    kOfxStatFailed
}

unsafe extern "C" fn param_delete_key(param: OfxParamHandle, _time: OfxTime) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { Param::from_handle(param) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    kOfxStatErrBadIndex
}

unsafe extern "C" fn param_delete_all_keys(param: OfxParamHandle) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { Param::from_handle(param) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    kOfxStatOK
}

unsafe extern "C" fn param_copy(
    to: OfxParamHandle,
    from: OfxParamHandle,
    _offset: OfxTime,
    _range: *const OfxRangeD,
) -> OfxStatus {
    // SAFETY: handles checked by magic.
    let (Some(to), Some(from)) = (unsafe { Param::from_handle(to) }, unsafe {
        Param::from_handle(from)
    }) else {
        return kOfxStatErrBadHandle;
    };
    if to.shape != from.shape {
        return kOfxStatErrValue;
    }
    to.set(from.value());
    kOfxStatOK
}

unsafe extern "C" fn param_edit_begin(set: OfxParamSetHandle, _name: *const c_char) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { ParamSet::from_handle(set) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    kOfxStatOK
}

unsafe extern "C" fn param_edit_end(set: OfxParamSetHandle) -> OfxStatus {
    // SAFETY: handle checked by magic.
    if unsafe { ParamSet::from_handle(set) }.is_none() {
        return kOfxStatErrBadHandle;
    }
    kOfxStatOK
}

type GetValueFn = unsafe extern "C" fn(OfxParamHandle, ...) -> OfxStatus;
type GetValueAtTimeFn = unsafe extern "C" fn(OfxParamHandle, OfxTime, ...) -> OfxStatus;
type GetIntegralFn = unsafe extern "C" fn(OfxParamHandle, OfxTime, OfxTime, ...) -> OfxStatus;

/// The parameter suite handed to plugins.
pub static PARAMETER_SUITE: OfxParameterSuiteV1 = OfxParameterSuiteV1 {
    paramDefine: Some(param_define),
    paramGetHandle: Some(param_get_handle),
    paramSetGetPropertySet: Some(param_set_get_property_set),
    paramGetPropertySet: Some(param_get_property_set),
    // SAFETY (all transmutes below): x86-64 SysV passes variadic arguments in the same
    // registers as fixed ones, so a fixed-arity callee with enough trailing parameters reads
    // what the variadic caller wrote (module doc).
    paramGetValue: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) -> OfxStatus,
            GetValueFn,
        >(param_get_value)
    }),
    paramGetValueAtTime: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                OfxTime,
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) -> OfxStatus,
            GetValueAtTimeFn,
        >(param_get_value_at_time)
    }),
    paramGetDerivative: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                OfxTime,
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) -> OfxStatus,
            GetValueAtTimeFn,
        >(param_get_derivative)
    }),
    paramGetIntegral: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                OfxTime,
                OfxTime,
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) -> OfxStatus,
            GetIntegralFn,
        >(param_get_integral)
    }),
    paramSetValue: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                usize,
                usize,
                usize,
                f64,
                f64,
                f64,
                f64,
            ) -> OfxStatus,
            GetValueFn,
        >(param_set_value)
    }),
    paramSetValueAtTime: Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                OfxParamHandle,
                OfxTime,
                usize,
                usize,
                usize,
                f64,
                f64,
                f64,
                f64,
            ) -> OfxStatus,
            GetValueAtTimeFn,
        >(param_set_value_at_time)
    }),
    paramGetNumKeys: Some(param_get_num_keys),
    paramGetKeyTime: Some(param_get_key_time),
    paramGetKeyIndex: Some(param_get_key_index),
    paramDeleteKey: Some(param_delete_key),
    paramDeleteAllKeys: Some(param_delete_all_keys),
    paramCopy: Some(param_copy),
    paramEditBegin: Some(param_edit_begin),
    paramEditEnd: Some(param_edit_end),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn define(set: &ParamSet, kind: &CStr, name: &CStr) -> OfxPropertySetHandle {
        let mut props = std::ptr::null_mut();
        let st = unsafe {
            PARAMETER_SUITE.paramDefine.unwrap()(
                set.handle(),
                kind.as_ptr(),
                name.as_ptr(),
                &mut props,
            )
        };
        assert_eq!(st, kOfxStatOK);
        props
    }

    /// Calls the suite through its variadic pointer types, exactly as a C or Rust plugin does.
    #[test]
    fn variadic_get_and_set_through_the_suite() {
        let desc = ParamSet::new();
        let ps = define(&desc, kOfxParamTypeDouble, c"guidance");
        let ps = unsafe { PropertySet::from_handle(ps) }.unwrap();
        ps.dbl(kOfxParamPropDefault, &[7.5]);
        let ps = define(&desc, kOfxParamTypeInteger, c"steps");
        unsafe { PropertySet::from_handle(ps) }
            .unwrap()
            .int(kOfxParamPropDefault, &[20]);
        let ps = define(&desc, kOfxParamTypeString, c"modelFolder");
        unsafe { PropertySet::from_handle(ps) }
            .unwrap()
            .str(kOfxParamPropDefault, &["/m"]);
        define(&desc, kOfxParamTypeRGBA, c"colour");
        define(&desc, kOfxParamTypeInteger2D, c"size");
        let mut props = std::ptr::null_mut();
        let st = unsafe {
            PARAMETER_SUITE.paramDefine.unwrap()(
                desc.handle(),
                kOfxParamTypeDouble.as_ptr(),
                c"guidance".as_ptr(),
                &mut props,
            )
        };
        assert_eq!(st, kOfxStatErrExists);

        let inst = ParamSet::instance_of(&desc, false);
        let s = &PARAMETER_SUITE;
        let handle = |n: &CStr| {
            let mut h = std::ptr::null_mut();
            let st = unsafe {
                s.paramGetHandle.unwrap()(inst.handle(), n.as_ptr(), &mut h, std::ptr::null_mut())
            };
            assert_eq!(st, kOfxStatOK);
            h
        };
        unsafe {
            let g = handle(c"guidance");
            let mut d = 0.0f64;
            assert_eq!(s.paramGetValue.unwrap()(g, &mut d as *mut f64), kOfxStatOK);
            assert_eq!(d, 7.5);
            assert_eq!(s.paramSetValue.unwrap()(g, 3.25f64), kOfxStatOK);
            assert_eq!(
                s.paramGetValueAtTime.unwrap()(g, 4.0, &mut d as *mut f64),
                kOfxStatOK
            );
            assert_eq!(d, 3.25);
            let mut i: c_int = 0;
            let st = handle(c"steps");
            assert_eq!(
                s.paramGetValue.unwrap()(st, &mut i as *mut c_int),
                kOfxStatOK
            );
            assert_eq!(i, 20);
            assert_eq!(
                s.paramSetValueAtTime.unwrap()(st, 2.0, 35 as c_int),
                kOfxStatOK
            );
            assert_eq!(
                s.paramGetValue.unwrap()(st, &mut i as *mut c_int),
                kOfxStatOK
            );
            assert_eq!(i, 35);
            let m = handle(c"modelFolder");
            let mut p: *const c_char = std::ptr::null();
            assert_eq!(
                s.paramGetValue.unwrap()(m, &mut p as *mut *const c_char),
                kOfxStatOK
            );
            assert_eq!(CStr::from_ptr(p).to_str().unwrap(), "/m");
            assert_eq!(s.paramSetValue.unwrap()(m, c"/other".as_ptr()), kOfxStatOK);
            assert_eq!(
                CStr::from_ptr(p).to_str().unwrap(),
                "/m",
                "old string stays valid"
            );
            let c = handle(c"colour");
            assert_eq!(
                s.paramSetValue.unwrap()(c, 0.1f64, 0.2f64, 0.3f64, 0.4f64),
                kOfxStatOK
            );
            let mut rgba = [0.0f64; 4];
            let [r, g2, b, a] = &mut rgba;
            assert_eq!(
                s.paramGetValue.unwrap()(
                    c,
                    r as *mut f64,
                    g2 as *mut f64,
                    b as *mut f64,
                    a as *mut f64
                ),
                kOfxStatOK
            );
            assert_eq!(rgba, [0.1, 0.2, 0.3, 0.4]);
            let z = handle(c"size");
            assert_eq!(
                s.paramSetValue.unwrap()(z, -4 as c_int, 9 as c_int),
                kOfxStatOK
            );
            let (mut x, mut y): (c_int, c_int) = (0, 0);
            assert_eq!(
                s.paramGetValue.unwrap()(z, &mut x as *mut c_int, &mut y as *mut c_int),
                kOfxStatOK
            );
            assert_eq!((x, y), (-4, 9));
            let mut deriv = 1.0f64;
            assert_eq!(
                s.paramGetDerivative.unwrap()(g, 0.0, &mut deriv as *mut f64),
                kOfxStatOK
            );
            assert_eq!(deriv, 0.0);
            let mut integral = 0.0f64;
            assert_eq!(
                s.paramGetIntegral.unwrap()(g, 1.0, 3.0, &mut integral as *mut f64),
                kOfxStatOK
            );
            assert_eq!(integral, 6.5);
            let mut n: c_uint = 9;
            assert_eq!(s.paramGetNumKeys.unwrap()(g, &mut n), kOfxStatOK);
            assert_eq!(n, 0);
        }
        // A minimal host: no string params, unreadable integers, readable doubles.
        let minimal = ParamSet::instance_of(&desc, true);
        assert!(minimal.get("modelFolder").is_none());
        let mut i: c_int = 0;
        let mut d = 0.0f64;
        unsafe {
            let st = minimal.get("steps").unwrap().handle();
            assert_eq!(
                s.paramGetValue.unwrap()(st, &mut i as *mut c_int),
                kOfxStatErrMissingHostFeature
            );
            let g = minimal.get("guidance").unwrap().handle();
            assert_eq!(s.paramGetValue.unwrap()(g, &mut d as *mut f64), kOfxStatOK);
        }
        assert_eq!(d, 7.5);
        // The descriptor keeps its defaults.
        assert_eq!(
            desc.get("guidance").unwrap().value(),
            ParamValue::Doubles(vec![0.0])
        );
    }

    #[test]
    fn text_values() {
        let desc = ParamSet::new();
        let ps = define(&desc, kOfxParamTypeChoice, c"fusion");
        unsafe { PropertySet::from_handle(ps) }.unwrap().str(
            kOfxParamPropChoiceOption,
            &["Flat", "Pyramid", "Overlap (linear)"],
        );
        define(&desc, kOfxParamTypeBoolean, c"faceEnhance");
        define(&desc, kOfxParamTypeDouble2D, c"pos");
        let inst = ParamSet::instance_of(&desc, false);
        let f = inst.get("fusion").unwrap();
        f.set_from_text("overlap-linear").unwrap();
        assert_eq!(f.value(), ParamValue::Ints(vec![2]));
        f.set_from_text("1").unwrap();
        assert_eq!(f.value(), ParamValue::Ints(vec![1]));
        assert!(f.set_from_text("cubic").unwrap_err().contains("Pyramid"));
        let b = inst.get("faceEnhance").unwrap();
        b.set_from_text("on").unwrap();
        assert_eq!(b.value(), ParamValue::Ints(vec![1]));
        assert!(b.set_from_text("maybe").is_err());
        let p = inst.get("pos").unwrap();
        p.set_from_text("1.5, -2").unwrap();
        assert_eq!(p.value(), ParamValue::Doubles(vec![1.5, -2.0]));
        assert!(p.set_from_text("1").is_err());
    }
}
