//! Seeded initial noise, generated on the CPU so that every device starts from the same latents.
//!
//! The reference draws one `randn(1,4,1,h,w)` from torch's CUDA generator and repeats it over all
//! frames. Torch's Philox stream is not reproducible here, so we document our own:
//!
//! - a SplitMix64 stream seeded with `seed` gives 64-bit words `w₀, w₁, …`;
//! - each pair of words gives `u₁ = (w₂ₖ >> 11 + 1) · 2⁻⁵³` in (0, 1] and `u₂ = (w₂ₖ₊₁ >> 11) · 2⁻⁵³`;
//! - the Box–Muller transform gives `z = sqrt(−2 ln u₁) · cos(2π u₂)` (f64, then rounded to f32);
//! - values fill the tensor `[4, h, w]` in row-major order.
//!
//! An explicit noise tensor (`--noise FILE.safetensors`) replaces it for parity with the reference.
use candle_core::{Device, Tensor};

use crate::Result;

/// The SplitMix64 generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output depends on `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64-bit word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box–Muller, cosine branch).
    pub fn next_normal(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (self.next_u64() >> 11) as f64 * SCALE;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// `n` standard normal f32 values from `seed`.
pub fn normal_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_normal() as f32).collect()
}

/// The initial latent noise `[channels, h, w]` (f32, CPU) for `seed`.
pub fn initial_noise(seed: u64, channels: usize, h: usize, w: usize) -> Result<Tensor> {
    let data = normal_f32(seed, channels * h * w);
    Ok(Tensor::from_vec(data, (channels, h, w), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Published SplitMix64 outputs for seed 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn normal_statistics_and_determinism() {
        let a = normal_f32(42, 100_000);
        assert_eq!(a, normal_f32(42, 100_000));
        assert_ne!(a[..8], normal_f32(43, 8)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
