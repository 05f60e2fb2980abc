//! Parameters (`OfxParameterSuiteV1`): definition in DescribeInContext, and typed values at a
//! time during instance actions.
//!
//! `paramGetValue`/`paramSetValue` and friends are C-variadic: each call below passes exactly the
//! arguments OFX 1.5 `ofxParam.h` lists for the parameter's type (int, double, `int` for bools
//! and choices, `char*` for strings).
use crate::error::{Error, Result, Status};
use crate::host::{func, host};
use crate::names;
use crate::property::{c_string, PropertySet};
use openfx::sys::generic::core::{OfxPropertySetHandle, OfxTime};
use openfx::sys::image_effect_v1::param::{OfxParamHandle, OfxParamSetHandle};
use std::ffi::{c_char, c_int, CStr};

/// The kinds of parameter this layer defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `kOfxParamTypeInteger`.
    Int,
    /// `kOfxParamTypeDouble`.
    Double,
    /// `kOfxParamTypeDouble2D` (e.g. a position on the image plane).
    Double2D,
    /// `kOfxParamTypeBoolean`.
    Bool,
    /// `kOfxParamTypeChoice` (an index into options).
    Choice,
    /// `kOfxParamTypeString`.
    String,
    /// `kOfxParamTypeGroup`.
    Group,
    /// `kOfxParamTypePage`.
    Page,
}

impl ParamType {
    /// The OFX type name.
    pub fn ofx_name(self) -> &'static CStr {
        match self {
            Self::Int => names::kOfxParamTypeInteger,
            Self::Double => names::kOfxParamTypeDouble,
            Self::Double2D => names::kOfxParamTypeDouble2D,
            Self::Bool => names::kOfxParamTypeBoolean,
            Self::Choice => names::kOfxParamTypeChoice,
            Self::String => names::kOfxParamTypeString,
            Self::Group => names::kOfxParamTypeGroup,
            Self::Page => names::kOfxParamTypePage,
        }
    }
}

/// How a string parameter is edited (`kOfxParamPropStringMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// One line of text.
    SingleLine,
    /// Several lines.
    MultiLine,
    /// A file path, with a file browser.
    FilePath,
    /// A directory path, with a folder browser.
    DirectoryPath,
    /// A read-only label.
    Label,
}

impl StringMode {
    fn ofx_name(self) -> &'static CStr {
        match self {
            Self::SingleLine => names::kOfxParamStringIsSingleLine,
            Self::MultiLine => names::kOfxParamStringIsMultiLine,
            Self::FilePath => names::kOfxParamStringIsFilePath,
            Self::DirectoryPath => names::kOfxParamStringIsDirectoryPath,
            Self::Label => names::kOfxParamStringIsLabel,
        }
    }
}

/// An effect's parameter set.
#[derive(Clone, Copy, Debug)]
pub struct ParamSet {
    handle: OfxParamSetHandle,
}

// SAFETY: opaque token; hosts allow parameter reads from render threads.
unsafe impl Send for ParamSet {}
unsafe impl Sync for ParamSet {}

impl ParamSet {
    /// Wrap a raw handle.
    pub fn from_raw(handle: OfxParamSetHandle) -> Self {
        Self { handle }
    }

    /// The raw handle.
    pub fn raw(&self) -> OfxParamSetHandle {
        self.handle
    }

    /// Define a parameter (DescribeInContext only). The script name defaults to `name`.
    pub fn define(&self, kind: ParamType, name: &str) -> Result<ParamDef> {
        let f = func(host()?.parameter.paramDefine, "paramDefine")?;
        let c = c_string(name)?;
        let mut p: OfxPropertySetHandle = std::ptr::null_mut();
        // SAFETY: valid pointers for the call.
        Status::check(
            unsafe { f(self.handle, kind.ofx_name().as_ptr(), c.as_ptr(), &mut p) },
            "paramDefine",
        )?;
        let def = ParamDef {
            props: PropertySet::from_raw(p),
            kind,
        };
        Ok(def)
    }

    /// An instance's parameter by name.
    pub fn param(&self, name: &str) -> Result<Param> {
        let f = func(host()?.parameter.paramGetHandle, "paramGetHandle")?;
        let c = c_string(name)?;
        let mut handle: OfxParamHandle = std::ptr::null_mut();
        let mut p: OfxPropertySetHandle = std::ptr::null_mut();
        // SAFETY: valid pointers for the call.
        Status::check(
            unsafe { f(self.handle, c.as_ptr(), &mut handle, &mut p) },
            "paramGetHandle",
        )?;
        if handle.is_null() {
            return Err(Error::NullHandle("parameter handle"));
        }
        Ok(Param {
            handle,
            props: PropertySet::from_raw(p),
        })
    }
}

/// A parameter descriptor, returned by [`ParamSet::define`]; setters return `&Self` to chain.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    props: PropertySet,
    kind: ParamType,
}

impl ParamDef {
    /// The descriptor's property set.
    pub fn properties(&self) -> PropertySet {
        self.props
    }

    /// The parameter's type.
    pub fn kind(&self) -> ParamType {
        self.kind
    }

    /// Label shown to people (`kOfxPropLabel`).
    pub fn label(&self, label: &str) -> Result<&Self> {
        self.props.set_string(names::kOfxPropLabel, 0, label)?;
        Ok(self)
    }

    /// Tooltip (`kOfxParamPropHint`).
    pub fn hint(&self, hint: &str) -> Result<&Self> {
        self.props.set_string(names::kOfxParamPropHint, 0, hint)?;
        Ok(self)
    }

    /// Script name (`kOfxParamPropScriptName`): frozen once shipped, projects store it.
    pub fn script_name(&self, name: &str) -> Result<&Self> {
        self.props
            .set_string(names::kOfxParamPropScriptName, 0, name)?;
        Ok(self)
    }

    /// Parent group (`kOfxParamPropParent`).
    pub fn parent(&self, group: &str) -> Result<&Self> {
        self.props
            .set_string(names::kOfxParamPropParent, 0, group)?;
        Ok(self)
    }

    /// Whether the value may animate (`kOfxParamPropAnimates`).
    pub fn animates(&self, on: bool) -> Result<&Self> {
        self.props.set_bool(names::kOfxParamPropAnimates, on)?;
        Ok(self)
    }

    /// Whether a change re-renders (`kOfxParamPropEvaluateOnChange`).
    pub fn evaluate_on_change(&self, on: bool) -> Result<&Self> {
        self.props
            .set_bool(names::kOfxParamPropEvaluateOnChange, on)?;
        Ok(self)
    }

    /// Default of an int parameter.
    pub fn default_int(&self, v: i32) -> Result<&Self> {
        self.props.set_int(names::kOfxParamPropDefault, 0, v)?;
        Ok(self)
    }

    /// Default of a double parameter.
    pub fn default_double(&self, v: f64) -> Result<&Self> {
        self.props.set_double(names::kOfxParamPropDefault, 0, v)?;
        Ok(self)
    }

    /// Default of a 2D double parameter.
    pub fn default_double2d(&self, x: f64, y: f64) -> Result<&Self> {
        self.props
            .set_double_n(names::kOfxParamPropDefault, &[x, y])?;
        Ok(self)
    }

    /// A 2D double parameter as an absolute position on the image plane, in canonical
    /// coordinates (`kOfxParamDoubleTypeXYAbsolute`, default in `kOfxParamCoordinatesCanonical`).
    pub fn xy_absolute_canonical(&self) -> Result<&Self> {
        let t = names::kOfxParamDoubleTypeXYAbsolute
            .to_str()
            .unwrap_or_default();
        self.props
            .set_string(names::kOfxParamPropDoubleType, 0, t)?;
        let c = names::kOfxParamCoordinatesCanonical
            .to_str()
            .unwrap_or_default();
        // OFX 1.2+; older hosts take canonical defaults anyway.
        if let Err(e) = self
            .props
            .set_string(names::kOfxParamPropDefaultCoordinateSystem, 0, c)
        {
            log::debug!("host ignores kOfxParamPropDefaultCoordinateSystem: {e}");
        }
        Ok(self)
    }

    /// Default of a boolean parameter.
    pub fn default_bool(&self, v: bool) -> Result<&Self> {
        self.props
            .set_int(names::kOfxParamPropDefault, 0, i32::from(v))?;
        Ok(self)
    }

    /// Default of a string parameter.
    pub fn default_string(&self, v: &str) -> Result<&Self> {
        self.props.set_string(names::kOfxParamPropDefault, 0, v)?;
        Ok(self)
    }

    /// Hard and display range of an int parameter.
    pub fn range_int(
        &self,
        min: i32,
        max: i32,
        display_min: i32,
        display_max: i32,
    ) -> Result<&Self> {
        self.props.set_int(names::kOfxParamPropMin, 0, min)?;
        self.props.set_int(names::kOfxParamPropMax, 0, max)?;
        self.props
            .set_int(names::kOfxParamPropDisplayMin, 0, display_min)?;
        self.props
            .set_int(names::kOfxParamPropDisplayMax, 0, display_max)?;
        Ok(self)
    }

    /// Hard and display range of a double parameter.
    pub fn range_double(
        &self,
        min: f64,
        max: f64,
        display_min: f64,
        display_max: f64,
    ) -> Result<&Self> {
        self.props.set_double(names::kOfxParamPropMin, 0, min)?;
        self.props.set_double(names::kOfxParamPropMax, 0, max)?;
        self.props
            .set_double(names::kOfxParamPropDisplayMin, 0, display_min)?;
        self.props
            .set_double(names::kOfxParamPropDisplayMax, 0, display_max)?;
        Ok(self)
    }

    /// Slider increment and displayed digits of a double parameter.
    pub fn increment(&self, increment: f64, digits: i32) -> Result<&Self> {
        self.props
            .set_double(names::kOfxParamPropIncrement, 0, increment)?;
        self.props.set_int(names::kOfxParamPropDigits, 0, digits)?;
        Ok(self)
    }

    /// Options of a choice parameter (`kOfxParamPropChoiceOption`), in index order.
    pub fn choice_options(&self, options: &[&str]) -> Result<&Self> {
        self.props
            .set_string_n(names::kOfxParamPropChoiceOption, options)?;
        Ok(self)
    }

    /// Editing mode of a string parameter.
    pub fn string_mode(&self, mode: StringMode) -> Result<&Self> {
        let m = mode.ofx_name().to_str().unwrap_or_default();
        self.props
            .set_string(names::kOfxParamPropStringMode, 0, m)?;
        if matches!(mode, StringMode::FilePath | StringMode::DirectoryPath) {
            // The browser must accept existing paths only; best effort, as older hosts lack it.
            if let Err(e) = self
                .props
                .set_bool(names::kOfxParamPropStringFilePathExists, true)
            {
                log::debug!("host ignores kOfxParamPropStringFilePathExists: {e}");
            }
        }
        Ok(self)
    }

    /// Children of a page parameter (`kOfxParamPropPageChild`), by name.
    pub fn page_children(&self, children: &[&str]) -> Result<&Self> {
        self.props
            .set_string_n(names::kOfxParamPropPageChild, children)?;
        Ok(self)
    }

    /// Whether a group starts open (`kOfxParamPropGroupOpen`).
    pub fn group_open(&self, open: bool) -> Result<&Self> {
        self.props.set_bool(names::kOfxParamPropGroupOpen, open)?;
        Ok(self)
    }
}

/// An instance's parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    handle: OfxParamHandle,
    props: PropertySet,
}

// SAFETY: opaque token; hosts allow parameter reads from render threads.
unsafe impl Send for Param {}
unsafe impl Sync for Param {}

impl Param {
    /// The raw handle.
    pub fn raw(&self) -> OfxParamHandle {
        self.handle
    }

    /// The parameter's property set.
    pub fn properties(&self) -> PropertySet {
        self.props
    }

    /// Enable or grey out the parameter in the UI (`kOfxParamPropEnabled`).
    pub fn set_enabled(&self, on: bool) -> Result<()> {
        self.props.set_bool(names::kOfxParamPropEnabled, on)
    }

    /// Value of an int parameter at `time`.
    pub fn int_at(&self, time: OfxTime) -> Result<i32> {
        let f = func(host()?.parameter.paramGetValueAtTime, "paramGetValueAtTime")?;
        let mut v: c_int = 0;
        // SAFETY: an int parameter takes one `int*` after the time.
        Status::check(
            unsafe { f(self.handle, time, &mut v as *mut c_int) },
            "paramGetValueAtTime",
        )?;
        Ok(v)
    }

    /// Value of a choice parameter (option index) at `time`.
    pub fn choice_at(&self, time: OfxTime) -> Result<i32> {
        self.int_at(time)
    }

    /// Value of a boolean parameter at `time`.
    pub fn bool_at(&self, time: OfxTime) -> Result<bool> {
        Ok(self.int_at(time)? != 0)
    }

    /// Value of a double parameter at `time`.
    pub fn double_at(&self, time: OfxTime) -> Result<f64> {
        let f = func(host()?.parameter.paramGetValueAtTime, "paramGetValueAtTime")?;
        let mut v = 0.0f64;
        // SAFETY: a double parameter takes one `double*` after the time.
        Status::check(
            unsafe { f(self.handle, time, &mut v as *mut f64) },
            "paramGetValueAtTime",
        )?;
        Ok(v)
    }

    /// Value of a 2D double parameter at `time`.
    pub fn double2d_at(&self, time: OfxTime) -> Result<(f64, f64)> {
        let f = func(host()?.parameter.paramGetValueAtTime, "paramGetValueAtTime")?;
        let (mut x, mut y) = (0.0f64, 0.0f64);
        // SAFETY: a 2D double parameter takes two `double*` after the time.
        Status::check(
            unsafe { f(self.handle, time, &mut x as *mut f64, &mut y as *mut f64) },
            "paramGetValueAtTime",
        )?;
        Ok((x, y))
    }

    /// Value of a string parameter at `time`, copied out of host memory.
    pub fn string_at(&self, time: OfxTime) -> Result<String> {
        let f = func(host()?.parameter.paramGetValueAtTime, "paramGetValueAtTime")?;
        let mut v: *const c_char = std::ptr::null();
        // SAFETY: a string parameter takes one `char**` after the time.
        Status::check(
            unsafe { f(self.handle, time, &mut v as *mut *const c_char) },
            "paramGetValueAtTime",
        )?;
        read_host_string(v)
    }

    /// Current value of an int (or choice, or bool) parameter.
    pub fn int(&self) -> Result<i32> {
        let f = func(host()?.parameter.paramGetValue, "paramGetValue")?;
        let mut v: c_int = 0;
        // SAFETY: one `int*`.
        Status::check(
            unsafe { f(self.handle, &mut v as *mut c_int) },
            "paramGetValue",
        )?;
        Ok(v)
    }

    /// Current value of a double parameter.
    pub fn double(&self) -> Result<f64> {
        let f = func(host()?.parameter.paramGetValue, "paramGetValue")?;
        let mut v = 0.0f64;
        // SAFETY: one `double*`.
        Status::check(
            unsafe { f(self.handle, &mut v as *mut f64) },
            "paramGetValue",
        )?;
        Ok(v)
    }

    /// Current value of a string parameter.
    pub fn string(&self) -> Result<String> {
        let f = func(host()?.parameter.paramGetValue, "paramGetValue")?;
        let mut v: *const c_char = std::ptr::null();
        // SAFETY: one `char**`.
        Status::check(
            unsafe { f(self.handle, &mut v as *mut *const c_char) },
            "paramGetValue",
        )?;
        read_host_string(v)
    }

    /// Set an int (or choice, or bool) parameter.
    pub fn set_int(&self, v: i32) -> Result<()> {
        let f = func(host()?.parameter.paramSetValue, "paramSetValue")?;
        // SAFETY: one `int` by value.
        Status::check(unsafe { f(self.handle, v as c_int) }, "paramSetValue")
    }

    /// Set a double parameter.
    pub fn set_double(&self, v: f64) -> Result<()> {
        let f = func(host()?.parameter.paramSetValue, "paramSetValue")?;
        // SAFETY: one `double` by value.
        Status::check(unsafe { f(self.handle, v) }, "paramSetValue")
    }

    /// Set a string parameter.
    pub fn set_string(&self, v: &str) -> Result<()> {
        let f = func(host()?.parameter.paramSetValue, "paramSetValue")?;
        let c = c_string(v)?;
        // SAFETY: one `const char*`; the host copies it.
        Status::check(unsafe { f(self.handle, c.as_ptr()) }, "paramSetValue")
    }

    /// Set an int parameter's key at `time`.
    pub fn set_int_at(&self, time: OfxTime, v: i32) -> Result<()> {
        let f = func(host()?.parameter.paramSetValueAtTime, "paramSetValueAtTime")?;
        // SAFETY: one `int` by value after the time.
        Status::check(
            unsafe { f(self.handle, time, v as c_int) },
            "paramSetValueAtTime",
        )
    }

    /// Set a double parameter's key at `time`.
    pub fn set_double_at(&self, time: OfxTime, v: f64) -> Result<()> {
        let f = func(host()?.parameter.paramSetValueAtTime, "paramSetValueAtTime")?;
        // SAFETY: one `double` by value after the time.
        Status::check(unsafe { f(self.handle, time, v) }, "paramSetValueAtTime")
    }
}

fn read_host_string(v: *const c_char) -> Result<String> {
    if v.is_null() {
        return Ok(String::new());
    }
    // SAFETY: the host returns a NUL-terminated string it owns, valid during this action.
    let s = unsafe { CStr::from_ptr(v) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| Error::NotUtf8("string parameter".into()))
}
