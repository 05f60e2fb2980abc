//! Device and dtype selection: `auto|cpu|cuda:N` and `f32|f16|bf16`.
//!
//! CUDA is behind the crate's `cuda` cargo feature (off by default), so the CPU build never needs a
//! CUDA toolkit. Without the feature, `cuda:N` is a named error and `auto` means CPU.
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use super::error::{EngineError, Result};

/// Where the networks run, as the user writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `N`.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" | "" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                if let Some(n) = t.strip_prefix("cuda:") {
                    n.parse::<usize>().map(Self::Cuda).map_err(|_| {
                        EngineError::Device(format!(
                            "\"{s}\" is not a device; the CUDA ordinal must be a number, e.g. cuda:0"
                        ))
                    })
                } else {
                    Err(EngineError::Device(format!(
                        "\"{s}\" is not a device; expected auto, cpu or cuda:N"
                    )))
                }
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// True when this build was compiled with the `cuda` feature.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Opens the device for `choice`.
///
/// `Auto` picks CUDA 0 when compiled with `cuda` and a GPU answers, else the CPU (logged).
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if cuda_compiled() && candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => log::warn!("CUDA device 0 could not be opened ({e}); using the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
        DeviceChoice::Cuda(n) => {
            if !cuda_compiled() {
                return Err(EngineError::Device(format!(
                    "cuda:{n} was requested but this build has no CUDA support; rebuild with \
                     `--features cuda` or choose cpu"
                )));
            }
            Device::new_cuda(n)
                .map_err(|e| EngineError::Device(format!("cannot open CUDA device {n}: {e}")))
        }
    }
}

/// Parses a dtype name: `f32`/`float32`, `f16`/`float16`/`half`, `bf16`/`bfloat16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" | "float" => Ok(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(EngineError::Device(format!(
            "\"{s}\" is not a dtype; expected f32, f16 or bf16"
        ))),
    }
}

/// Checks that `device` can run networks in `dtype`.
///
/// Every run dtype runs on both devices. On the CPU, bf16 means f32 tensors whose matrix products
/// use the processor's bf16 dot products ([`tensor_dtype`]); f16 runs through candle's f16 ops
/// (slowly: f32 is the better choice there).
pub fn check_dtype(_device: &Device, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(EngineError::Device(format!(
            "{} is not a run dtype; expected f32, f16 or bf16",
            other.as_str()
        ))),
    }
}

/// The dtype of the networks' weights and activations for the run dtype `precision` on `device`.
///
/// bf16 on the CPU keeps them in f32, as `torch.autocast(device_type="cpu", dtype=torch.bfloat16)`
/// does: inside [`crate::networks::gemm_bf16::scope`] the linear layers, convolutions and
/// attention products round their operands to bf16 and accumulate in f32 (AMX or AVX-512 BF16),
/// and everything else (norms, softmax sums, activations, residuals) stays f32. On a processor
/// without bf16 dot products the products stay f32 too.
pub fn tensor_dtype(device: &Device, precision: DType) -> DType {
    if precision == DType::BF16 && device.is_cpu() {
        DType::F32
    } else {
        precision
    }
}

/// The run dtype as a log line says it: on the CPU, bf16 also names the instructions its matrix
/// products use (`bf16 (AMX)`, `bf16 (AVX-512 BF16)`, or `bf16 (no bf16 instructions: as f32)`).
pub fn precision_name(device: &Device, precision: DType) -> String {
    use crate::networks::gemm_bf16::{available, Kernel};
    match (precision, device.is_cpu()) {
        (DType::BF16, true) => match available() {
            Some(Kernel::Amx) => "bf16 (AMX)".into(),
            Some(Kernel::Avx512) => "bf16 (AVX-512 BF16)".into(),
            None => "bf16 (no bf16 instructions: as f32)".into(),
        },
        _ => dtype_name(precision).into(),
    }
}

/// Parses and opens a device and dtype, e.g. `("auto", "f16")`, and checks that they go together.
pub fn select(device: &str, dtype: &str) -> Result<(Device, DType)> {
    let d = select_device(device.parse()?)?;
    let t = parse_dtype(dtype)?;
    check_dtype(&d, t)?;
    Ok((d, t))
}

/// The short name of a run dtype (`f32`, `f16`, `bf16`), as `parse_dtype` reads it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// A human-readable device name for logs and `inspect`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(
            "auto".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Auto)
        );
        assert_eq!("CPU".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Cpu));
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Cuda(3))
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(parse_dtype("bf16").ok(), Some(DType::BF16));
        assert_eq!(parse_dtype("half").ok(), Some(DType::F16));
        assert!(parse_dtype("int8").is_err());
        assert!(matches!(select_device(DeviceChoice::Cpu), Ok(Device::Cpu)));
        assert!(check_dtype(&Device::Cpu, DType::BF16).is_ok());
        assert_eq!(tensor_dtype(&Device::Cpu, DType::BF16), DType::F32);
        assert_eq!(tensor_dtype(&Device::Cpu, DType::F16), DType::F16);
        assert!(matches!(
            select("cpu", "f16"),
            Ok((Device::Cpu, DType::F16))
        ));
        assert!(matches!(
            select("cpu", "bf16"),
            Ok((Device::Cpu, DType::BF16))
        ));
        if !cuda_compiled() {
            assert!(matches!(select_device(DeviceChoice::Auto), Ok(Device::Cpu)));
            let e = select_device(DeviceChoice::Cuda(0));
            assert!(matches!(e, Err(EngineError::Device(_))));
        }
    }
}
