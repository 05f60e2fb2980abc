//! The memory suite (`OfxMemorySuiteV1`): host-managed allocations, freed on drop.
use crate::error::{Error, Result, Status};
use crate::host::{func, host};
use std::ffi::c_void;

/// A block of host memory; freed with `memoryFree` when dropped.
#[derive(Debug)]
pub struct HostMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the block is plain bytes owned by this value.
unsafe impl Send for HostMemory {}

impl HostMemory {
    /// Allocate `len` zeroed bytes, attributed to `effect` (an instance, or a null handle).
    /// Zeroing keeps [`HostMemory::as_mut_slice`] from ever exposing uninitialised memory.
    pub fn alloc(effect: crate::ImageEffect, len: usize) -> Result<Self> {
        let suite = host()?.memory.ok_or(Error::MissingSuite {
            name: "OfxMemorySuite",
            version: 1,
        })?;
        let f = func(suite.memoryAlloc, "memoryAlloc")?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        Status::check(
            unsafe { f(effect.raw().cast(), len, &mut p) },
            "memoryAlloc",
        )?;
        if p.is_null() && len > 0 {
            return Err(Error::Status {
                call: "memoryAlloc",
                status: Status::ErrMemory,
            });
        }
        if len > 0 {
            // SAFETY: `len` bytes were just allocated at `p`.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, len) };
        }
        Ok(Self { ptr: p.cast(), len })
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        if let Ok(h) = host() {
            if let Some(f) = h.memory.and_then(|s| s.memoryFree) {
                // SAFETY: frees the block allocated by memoryAlloc, once.
                unsafe { f(self.ptr.cast()) };
            }
        }
    }
}
