//! The image-effect suite (`OfxImageEffectSuiteV1`): effect handles, clips, images, abort.
use crate::error::{Error, Result, Status};
use crate::host::{func, host};
use crate::names;
use crate::param::ParamSet;
use crate::pixels::{BitDepth, Components, PixelError, PixelLayout, PixelView, PixelViewMut, Rect};
use crate::property::{c_string, PropertySet};
use openfx::sys::generic::core::{OfxPropertySetHandle, OfxRangeD, OfxRectD, OfxTime};
use openfx::sys::image_effect_v1::image_effect::{OfxImageClipHandle, OfxImageEffectHandle};
use std::ffi::c_void;

/// An image effect handle: the plug-in descriptor (Describe), a context descriptor
/// (DescribeInContext) or an instance (everything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageEffect {
    handle: OfxImageEffectHandle,
}

// SAFETY: an opaque token; OFX allows suite calls on it from render threads.
unsafe impl Send for ImageEffect {}
unsafe impl Sync for ImageEffect {}

impl ImageEffect {
    /// Wrap the `handle` argument of the main entry point.
    pub fn from_raw(handle: *const c_void) -> Self {
        Self {
            handle: handle.cast_mut().cast(),
        }
    }

    /// The raw handle.
    pub fn raw(&self) -> OfxImageEffectHandle {
        self.handle
    }

    /// Whether the handle is null.
    pub fn is_null(&self) -> bool {
        self.handle.is_null()
    }

    /// The effect's property set (`getPropertySet`).
    pub fn properties(&self) -> Result<PropertySet> {
        let f = func(host()?.image_effect.getPropertySet, "getPropertySet")?;
        let mut p: OfxPropertySetHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the host checks the handle.
        Status::check(unsafe { f(self.handle, &mut p) }, "getPropertySet")?;
        Ok(PropertySet::from_raw(p))
    }

    /// The effect's parameter set (`getParamSet`).
    pub fn param_set(&self) -> Result<ParamSet> {
        let f = func(host()?.image_effect.getParamSet, "getParamSet")?;
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        Status::check(unsafe { f(self.handle, &mut p) }, "getParamSet")?;
        Ok(ParamSet::from_raw(p))
    }

    /// Define a clip in DescribeInContext; returns its descriptor properties.
    pub fn define_clip(&self, name: &str) -> Result<PropertySet> {
        let f = func(host()?.image_effect.clipDefine, "clipDefine")?;
        let c = c_string(name)?;
        let mut p: OfxPropertySetHandle = std::ptr::null_mut();
        // SAFETY: valid pointers for the call.
        Status::check(unsafe { f(self.handle, c.as_ptr(), &mut p) }, "clipDefine")?;
        Ok(PropertySet::from_raw(p))
    }

    /// An instance's clip by name (`clipGetHandle`).
    pub fn clip(&self, name: &str) -> Result<Clip> {
        let f = func(host()?.image_effect.clipGetHandle, "clipGetHandle")?;
        let c = c_string(name)?;
        let mut clip: OfxImageClipHandle = std::ptr::null_mut();
        let mut p: OfxPropertySetHandle = std::ptr::null_mut();
        // SAFETY: valid pointers for the call.
        Status::check(
            unsafe { f(self.handle, c.as_ptr(), &mut clip, &mut p) },
            "clipGetHandle",
        )?;
        if clip.is_null() {
            return Err(Error::NullHandle("clip handle"));
        }
        Ok(Clip {
            handle: clip,
            props: PropertySet::from_raw(p),
        })
    }

    /// Whether the host asks the effect to stop rendering (`abort`). `false` when the host has
    /// no abort function or no host is set.
    pub fn abort(&self) -> bool {
        let Ok(h) = host() else { return false };
        match h.image_effect.abort {
            // SAFETY: plain call on the instance handle.
            Some(f) => unsafe { f(self.handle) != 0 },
            None => false,
        }
    }

    /// The context this instance runs in (`kOfxImageEffectPropContext`).
    pub fn context(&self) -> Result<String> {
        self.properties()?
            .get_string(names::kOfxImageEffectPropContext, 0)
    }

    /// The instance's frame range (`kOfxImageEffectPropFrameRange` on the effect). OFX 1.4 does
    /// not list it among the instance properties a host must set; Natron and Resolve set it,
    /// MLT does not (the property suite answers `kOfxStatErrUnknown`).
    pub fn frame_range(&self) -> Result<OfxRangeD> {
        range_of(&self.properties()?)
    }

    /// The pointer stored in `kOfxPropInstanceData` (null until set).
    pub fn instance_data(&self) -> Result<*mut c_void> {
        self.properties()?
            .get_pointer(names::kOfxPropInstanceData, 0)
    }

    /// Store a pointer in `kOfxPropInstanceData`.
    pub fn set_instance_data(&self, data: *mut c_void) -> Result<()> {
        self.properties()?
            .set_pointer(names::kOfxPropInstanceData, 0, data)
    }
}

/// An instance's clip.
#[derive(Clone, Copy, Debug)]
pub struct Clip {
    handle: OfxImageClipHandle,
    props: PropertySet,
}

// SAFETY: opaque tokens; OFX allows clip calls from render threads.
unsafe impl Send for Clip {}
unsafe impl Sync for Clip {}

impl Clip {
    /// The raw handle.
    pub fn raw(&self) -> OfxImageClipHandle {
        self.handle
    }

    /// The clip's property set.
    pub fn properties(&self) -> PropertySet {
        self.props
    }

    /// Whether something is connected to the clip (`kOfxImageClipPropConnected`).
    pub fn is_connected(&self) -> Result<bool> {
        self.props.get_bool(names::kOfxImageClipPropConnected)
    }

    /// The clip's frame range (`kOfxImageEffectPropFrameRange`). OFX requires it on clip
    /// instances, but MLT 7.40 does not set it (the property suite answers
    /// `kOfxStatErrUnknown`): callers that can do without it should fall back.
    pub fn frame_range(&self) -> Result<OfxRangeD> {
        range_of(&self.props)
    }

    /// Depth the host will hand over (`kOfxImageEffectPropPixelDepth`), as its OFX name.
    pub fn pixel_depth(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageEffectPropPixelDepth, 0)
    }

    /// Components the host will hand over (`kOfxImageEffectPropComponents`), as OFX name.
    pub fn components(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageEffectPropComponents, 0)
    }

    /// Depth of the clip before the host's conversion (`kOfxImageClipPropUnmappedPixelDepth`).
    pub fn unmapped_pixel_depth(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageClipPropUnmappedPixelDepth, 0)
    }

    /// Components before the host's conversion (`kOfxImageClipPropUnmappedComponents`).
    pub fn unmapped_components(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageClipPropUnmappedComponents, 0)
    }

    /// The clip's region of definition at `time`, in canonical coordinates.
    pub fn region_of_definition(&self, time: OfxTime) -> Result<OfxRectD> {
        let f = func(
            host()?.image_effect.clipGetRegionOfDefinition,
            "clipGetRegionOfDefinition",
        )?;
        let mut r = OfxRectD {
            x1: 0.0,
            y1: 0.0,
            x2: 0.0,
            y2: 0.0,
        };
        // SAFETY: valid out-pointer.
        Status::check(
            unsafe { f(self.handle, time, &mut r) },
            "clipGetRegionOfDefinition",
        )?;
        Ok(r)
    }

    /// The image at `time` (`clipGetImage`), optionally restricted to `region`. `Ok(None)` when
    /// the host has no image there (it returned `kOfxStatFailed` or a null handle).
    /// The image is released when dropped.
    pub fn image(&self, time: OfxTime, region: Option<OfxRectD>) -> Result<Option<Image>> {
        let f = func(host()?.image_effect.clipGetImage, "clipGetImage")?;
        let mut img: OfxPropertySetHandle = std::ptr::null_mut();
        let region_ptr = region
            .as_ref()
            .map_or(std::ptr::null(), |r| r as *const OfxRectD);
        // SAFETY: valid pointers for the call.
        let status = Status::from_raw(unsafe { f(self.handle, time, region_ptr, &mut img) });
        match status {
            Status::Ok if !img.is_null() => Ok(Some(Image {
                props: PropertySet::from_raw(img),
            })),
            Status::Ok | Status::Failed => Ok(None),
            status => Err(Error::Status {
                call: "clipGetImage",
                status,
            }),
        }
    }
}

/// `kOfxImageEffectPropFrameRange` of a property set, as (min, max).
fn range_of(props: &PropertySet) -> Result<OfxRangeD> {
    Ok(OfxRangeD {
        min: props.get_double(names::kOfxImageEffectPropFrameRange, 0)?,
        max: props.get_double(names::kOfxImageEffectPropFrameRange, 1)?,
    })
}

/// An image fetched from a clip; released (`clipReleaseImage`) on drop.
#[derive(Debug)]
pub struct Image {
    props: PropertySet,
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Ok(h) = host() {
            if let Some(f) = h.image_effect.clipReleaseImage {
                // SAFETY: the handle came from clipGetImage and is released once.
                let status = unsafe { f(self.props.raw()) };
                if status != names::kOfxStatOK {
                    log::warn!("clipReleaseImage returned {}", Status::from_raw(status));
                }
            }
        }
    }
}

impl Image {
    /// The image's property set.
    pub fn properties(&self) -> PropertySet {
        self.props
    }

    /// Pixel bounds the host returned (`kOfxImagePropBounds`), which may differ from the region
    /// asked for.
    pub fn bounds(&self) -> Result<Rect> {
        self.props.get_rect_i(names::kOfxImagePropBounds)
    }

    /// The image's region of definition (`kOfxImagePropRegionOfDefinition`).
    pub fn region_of_definition(&self) -> Result<Rect> {
        self.props
            .get_rect_i(names::kOfxImagePropRegionOfDefinition)
    }

    /// Bytes between the starts of rows y and y+1 (`kOfxImagePropRowBytes`); may be negative.
    pub fn row_bytes(&self) -> Result<isize> {
        Ok(self.props.get_int(names::kOfxImagePropRowBytes, 0)? as isize)
    }

    /// The depth name as the host gave it.
    pub fn depth_name(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageEffectPropPixelDepth, 0)
    }

    /// The components name as the host gave it.
    pub fn components_name(&self) -> Result<String> {
        self.props
            .get_string(names::kOfxImageEffectPropComponents, 0)
    }

    /// Parsed depth.
    pub fn depth(&self) -> Result<BitDepth> {
        Ok(BitDepth::from_ofx_name(&self.depth_name()?)?)
    }

    /// Parsed components.
    pub fn components(&self) -> Result<Components> {
        Ok(Components::from_ofx_name(&self.components_name()?)?)
    }

    /// Parsed layout.
    pub fn layout(&self) -> Result<PixelLayout> {
        Ok(PixelLayout::new(self.depth()?, self.components()?))
    }

    /// Pixel aspect ratio (`kOfxImagePropPixelAspectRatio`), 1 when the host omits it.
    pub fn pixel_aspect_ratio(&self) -> f64 {
        self.props
            .get_double(names::kOfxImagePropPixelAspectRatio, 0)
            .unwrap_or(1.0)
    }

    /// The raw data pointer (`kOfxImagePropData`), addressing pixel (x1, y1).
    pub fn data(&self) -> Result<*mut c_void> {
        self.props.get_pointer(names::kOfxImagePropData, 0)
    }

    /// A read-only pixel view over the host's memory.
    pub fn view(&self) -> Result<PixelView<'_>> {
        let (ptr, bounds, rb, layout) = self.geometry()?;
        // SAFETY: OFX guarantees the image's rows are valid until clipReleaseImage, which only
        // runs when `self` (borrowed by the view) is dropped.
        Ok(unsafe { PixelView::from_raw(ptr.cast_const(), bounds, rb, layout)? })
    }

    /// A writable pixel view (for Output images).
    pub fn view_mut(&mut self) -> Result<PixelViewMut<'_>> {
        let (ptr, bounds, rb, layout) = self.geometry()?;
        // SAFETY: as for `view`; `&mut self` makes this the only view of these pixels.
        Ok(unsafe { PixelViewMut::from_raw(ptr, bounds, rb, layout)? })
    }

    fn geometry(&self) -> Result<(*mut u8, Rect, isize, PixelLayout)> {
        let layout = self.layout()?;
        let bounds = self.bounds()?;
        let rb = self.row_bytes()?;
        let ptr = self.data()?.cast::<u8>();
        if ptr.is_null() && !bounds.is_empty() {
            return Err(PixelError::NullData.into());
        }
        Ok((ptr, bounds, rb, layout))
    }
}

/// Host image memory (`imageMemoryAlloc`): a buffer the host may move between uses, so it is only
/// addressable while locked. Freed on drop.
#[derive(Debug)]
pub struct ImageMemory {
    handle: openfx::sys::image_effect_v1::image_effect::OfxImageMemoryHandle,
    len: usize,
    /// Whether the bytes were zeroed (on first lock), so slices never see uninitialised memory.
    initialised: bool,
}

// SAFETY: the handle is an opaque token owned by this value.
unsafe impl Send for ImageMemory {}

impl ImageMemory {
    /// Allocate `len` bytes attributed to `effect` (an instance, or a null handle).
    pub fn alloc(effect: ImageEffect, len: usize) -> Result<Self> {
        let f = func(host()?.image_effect.imageMemoryAlloc, "imageMemoryAlloc")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        Status::check(
            unsafe { f(effect.raw(), len, &mut handle) },
            "imageMemoryAlloc",
        )?;
        if handle.is_null() {
            return Err(Error::NullHandle("image memory handle"));
        }
        Ok(Self {
            handle,
            len,
            initialised: false,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lock the memory and run `f` on its bytes (zeroed before first use), then unlock it.
    pub fn with_locked<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R> {
        let h = host()?;
        let lock = func(h.image_effect.imageMemoryLock, "imageMemoryLock")?;
        let unlock = func(h.image_effect.imageMemoryUnlock, "imageMemoryUnlock")?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the handle came from imageMemoryAlloc.
        Status::check(unsafe { lock(self.handle, &mut ptr) }, "imageMemoryLock")?;
        let bytes: &mut [u8] = if ptr.is_null() || self.len == 0 {
            &mut []
        } else {
            if !self.initialised {
                // SAFETY: `len` locked bytes at `ptr`.
                unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, self.len) };
                self.initialised = true;
            }
            // SAFETY: a locked block of `len` bytes, exclusively ours until unlocked.
            unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), self.len) }
        };
        let r = f(bytes);
        // SAFETY: balances the lock above.
        Status::check(unsafe { unlock(self.handle) }, "imageMemoryUnlock")?;
        Ok(r)
    }
}

impl Drop for ImageMemory {
    fn drop(&mut self) {
        if let Ok(Some(f)) = host().map(|h| h.image_effect.imageMemoryFree) {
            // SAFETY: frees the block this value allocated, once.
            unsafe { f(self.handle) };
        }
    }
}
