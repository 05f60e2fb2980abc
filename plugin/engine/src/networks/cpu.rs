//! What the CPU kernels share: the SIMD level they are compiled for, their contiguous f32
//! operands, and the output pointer their work items write in disjoint parts.
use candle_core::{CpuStorage, Layout, Result};

/// The widest instruction set the kernels' dispatch uses here: 0 generic, 1 AVX2 + FMA,
/// 2 AVX-512 (with AVX2 + FMA). Detected once.
pub(crate) fn simd_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return if is_x86_feature_detected!("avx512f") {
                    2
                } else {
                    1
                };
            }
        }
        0
    })
}

/// The contiguous f32 elements of a CPU storage; `what` names the kernel in the error.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// A raw pointer into one buffer whose disjoint parts the work items of a [`super::pool::for_each`]
/// write.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: every user dereferences it only for the part of the buffer that its work item owns.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The element `offset` past the start (a method, so closures capture the whole wrapper).
    pub(crate) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }

    /// `len` elements from `offset`.
    ///
    /// # Safety
    /// The range is inside the buffer and no other thread uses it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}
