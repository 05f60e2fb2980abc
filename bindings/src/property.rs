//! Typed access to OFX property sets (`OfxPropertySuiteV1`): string, int, double and pointer
//! values, single or N-dimensional, and dimension counts.
use crate::error::{Error, Result};
use crate::host::{func, host};
use crate::pixels::Rect;
use openfx::sys::generic::core::{OfxPropertySetHandle, OfxRectD, OfxStatus};
use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// A property set handle: a descriptor, an instance, a clip, an image, or action arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertySet {
    handle: OfxPropertySetHandle,
}

// SAFETY: a property set handle is an opaque token; thread rules are the host's (OFX 1.5 allows
// property access from render threads on the objects an action was given).
unsafe impl Send for PropertySet {}
unsafe impl Sync for PropertySet {}

/// A Rust string as a C string, or [`Error::Nul`].
pub fn c_string(value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::Nul(value.to_owned()))
}

fn key(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

/// `Ok(())` for `kOfxStatOK`, otherwise an [`Error::Property`] naming the call and the property.
fn check(raw: OfxStatus, call: &'static str, name: &CStr) -> Result<()> {
    match crate::Status::from_raw(raw) {
        crate::Status::Ok => Ok(()),
        status => Err(Error::Property {
            call,
            property: key(name),
            status,
        }),
    }
}

fn index(i: usize) -> Result<c_int> {
    c_int::try_from(i).map_err(|_| Error::Status {
        call: "property index",
        status: crate::Status::ErrBadIndex,
    })
}

impl PropertySet {
    /// Wrap a raw handle (null is allowed; calls on it fail with the host's status).
    pub fn from_raw(handle: OfxPropertySetHandle) -> Self {
        Self { handle }
    }

    /// The raw handle.
    pub fn raw(&self) -> OfxPropertySetHandle {
        self.handle
    }

    /// Whether the handle is null (e.g. an absent `inArgs`).
    pub fn is_null(&self) -> bool {
        self.handle.is_null()
    }

    /// Number of values the property holds (`propGetDimension`).
    pub fn dimension(&self, name: &CStr) -> Result<usize> {
        let f = func(host()?.property.propGetDimension, "propGetDimension")?;
        let mut count: c_int = 0;
        // SAFETY: valid name pointer and out-pointer; the host checks the handle.
        check(
            unsafe { f(self.handle, name.as_ptr(), &mut count) },
            "propGetDimension",
            name,
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Reset a property to its default (`propReset`).
    pub fn reset(&self, name: &CStr) -> Result<()> {
        let f = func(host()?.property.propReset, "propReset")?;
        // SAFETY: valid name pointer.
        check(unsafe { f(self.handle, name.as_ptr()) }, "propReset", name)
    }

    /// Integer value `i` of a property.
    pub fn get_int(&self, name: &CStr, i: usize) -> Result<i32> {
        let f = func(host()?.property.propGetInt, "propGetInt")?;
        let mut v: c_int = 0;
        // SAFETY: valid name and out-pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, &mut v) },
            "propGetInt",
            name,
        )?;
        Ok(v)
    }

    /// Set integer value `i` of a property.
    pub fn set_int(&self, name: &CStr, i: usize, value: i32) -> Result<()> {
        let f = func(host()?.property.propSetInt, "propSetInt")?;
        // SAFETY: valid name pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, value) },
            "propSetInt",
            name,
        )
    }

    /// Double value `i` of a property.
    pub fn get_double(&self, name: &CStr, i: usize) -> Result<f64> {
        let f = func(host()?.property.propGetDouble, "propGetDouble")?;
        let mut v = 0.0f64;
        // SAFETY: valid name and out-pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, &mut v) },
            "propGetDouble",
            name,
        )?;
        Ok(v)
    }

    /// Set double value `i` of a property.
    pub fn set_double(&self, name: &CStr, i: usize, value: f64) -> Result<()> {
        let f = func(host()?.property.propSetDouble, "propSetDouble")?;
        // SAFETY: valid name pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, value) },
            "propSetDouble",
            name,
        )
    }

    /// Pointer value `i` of a property.
    pub fn get_pointer(&self, name: &CStr, i: usize) -> Result<*mut c_void> {
        let f = func(host()?.property.propGetPointer, "propGetPointer")?;
        let mut v: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid name and out-pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, &mut v) },
            "propGetPointer",
            name,
        )?;
        Ok(v)
    }

    /// Set pointer value `i` of a property (stored opaquely, never dereferenced here).
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn set_pointer(&self, name: &CStr, i: usize, value: *mut c_void) -> Result<()> {
        let f = func(host()?.property.propSetPointer, "propSetPointer")?;
        // SAFETY: valid name pointer; the host stores the pointer opaquely.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, value) },
            "propSetPointer",
            name,
        )
    }

    /// String value `i` of a property, copied out of host memory.
    pub fn get_string(&self, name: &CStr, i: usize) -> Result<String> {
        let f = func(host()?.property.propGetString, "propGetString")?;
        let mut v: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid name and out-pointer.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, &mut v) },
            "propGetString",
            name,
        )?;
        if v.is_null() {
            return Ok(String::new());
        }
        // SAFETY: the host returns a NUL-terminated string valid until the next call on the set.
        let s = unsafe { CStr::from_ptr(v) };
        s.to_str()
            .map(str::to_owned)
            .map_err(|_| Error::NotUtf8(key(name)))
    }

    /// Set string value `i` of a property (the host copies it).
    pub fn set_string(&self, name: &CStr, i: usize, value: &str) -> Result<()> {
        let f = func(host()?.property.propSetString, "propSetString")?;
        let c = c_string(value)?;
        // SAFETY: valid pointers for the duration of the call; the host copies the string.
        check(
            unsafe { f(self.handle, name.as_ptr(), index(i)?, c.as_ptr()) },
            "propSetString",
            name,
        )
    }

    /// All integer values of a property.
    pub fn get_int_n(&self, name: &CStr) -> Result<Vec<i32>> {
        let n = self.dimension(name)?;
        let mut out = vec![0; n];
        if n > 0 {
            let f = func(host()?.property.propGetIntN, "propGetIntN")?;
            // SAFETY: `out` holds `n` values.
            check(
                unsafe { f(self.handle, name.as_ptr(), index(n)?, out.as_mut_ptr()) },
                "propGetIntN",
                name,
            )?;
        }
        Ok(out)
    }

    /// Set all integer values of a property.
    pub fn set_int_n(&self, name: &CStr, values: &[i32]) -> Result<()> {
        let f = func(host()?.property.propSetIntN, "propSetIntN")?;
        // SAFETY: `values` holds the count we pass.
        check(
            unsafe {
                f(
                    self.handle,
                    name.as_ptr(),
                    index(values.len())?,
                    values.as_ptr(),
                )
            },
            "propSetIntN",
            name,
        )
    }

    /// All double values of a property.
    pub fn get_double_n(&self, name: &CStr) -> Result<Vec<f64>> {
        let n = self.dimension(name)?;
        let mut out = vec![0.0; n];
        if n > 0 {
            let f = func(host()?.property.propGetDoubleN, "propGetDoubleN")?;
            // SAFETY: `out` holds `n` values.
            check(
                unsafe { f(self.handle, name.as_ptr(), index(n)?, out.as_mut_ptr()) },
                "propGetDoubleN",
                name,
            )?;
        }
        Ok(out)
    }

    /// Set all double values of a property.
    pub fn set_double_n(&self, name: &CStr, values: &[f64]) -> Result<()> {
        let f = func(host()?.property.propSetDoubleN, "propSetDoubleN")?;
        // SAFETY: `values` holds the count we pass.
        check(
            unsafe {
                f(
                    self.handle,
                    name.as_ptr(),
                    index(values.len())?,
                    values.as_ptr(),
                )
            },
            "propSetDoubleN",
            name,
        )
    }

    /// All string values of a property.
    pub fn get_string_n(&self, name: &CStr) -> Result<Vec<String>> {
        (0..self.dimension(name)?)
            .map(|i| self.get_string(name, i))
            .collect()
    }

    /// Set all string values of a property (one `propSetString` per index, which every host
    /// implements; some hosts' `propSetStringN` is missing).
    pub fn set_string_n(&self, name: &CStr, values: &[&str]) -> Result<()> {
        for (i, v) in values.iter().enumerate() {
            self.set_string(name, i, v)?;
        }
        Ok(())
    }

    /// Set a boolean (an int 0/1 in OFX).
    pub fn set_bool(&self, name: &CStr, value: bool) -> Result<()> {
        self.set_int(name, 0, i32::from(value))
    }

    /// A boolean (an int in OFX; non-zero is true).
    pub fn get_bool(&self, name: &CStr) -> Result<bool> {
        Ok(self.get_int(name, 0)? != 0)
    }

    /// An integer rectangle stored as four ints (x1, y1, x2, y2), e.g. `kOfxImagePropBounds`.
    pub fn get_rect_i(&self, name: &CStr) -> Result<Rect> {
        let f = func(host()?.property.propGetIntN, "propGetIntN")?;
        let mut v = [0 as c_int; 4];
        // SAFETY: `v` holds four values.
        check(
            unsafe { f(self.handle, name.as_ptr(), 4, v.as_mut_ptr()) },
            "propGetIntN",
            name,
        )?;
        Ok(Rect::new(v[0], v[1], v[2], v[3]))
    }

    /// A double rectangle stored as four doubles, e.g. `kOfxImageEffectPropRegionOfDefinition`.
    pub fn get_rect_d(&self, name: &CStr) -> Result<OfxRectD> {
        let f = func(host()?.property.propGetDoubleN, "propGetDoubleN")?;
        let mut v = [0.0f64; 4];
        // SAFETY: `v` holds four values.
        check(
            unsafe { f(self.handle, name.as_ptr(), 4, v.as_mut_ptr()) },
            "propGetDoubleN",
            name,
        )?;
        Ok(OfxRectD {
            x1: v[0],
            y1: v[1],
            x2: v[2],
            y2: v[3],
        })
    }

    /// Set a double rectangle as four doubles.
    pub fn set_rect_d(&self, name: &CStr, r: OfxRectD) -> Result<()> {
        self.set_double_n(name, &[r.x1, r.y1, r.x2, r.y2])
    }
}
