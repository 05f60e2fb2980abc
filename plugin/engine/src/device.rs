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
/// candle 0.11's CPU matmul has no bf16 kernel, so bf16 is CUDA-only; f16 runs on both (slowly on the
/// CPU, where f32 is the better choice).
pub fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 => Ok(()),
        DType::BF16 if device.is_cuda() => Ok(()),
        DType::BF16 => Err(EngineError::Device(
            "bf16 is not supported on the CPU (candle has no CPU bf16 matmul); use f32 or f16"
                .into(),
        )),
        other => Err(EngineError::Device(format!(
            "{} is not a run dtype; expected f32, f16 or bf16",
            other.as_str()
        ))),
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
        assert!(check_dtype(&Device::Cpu, DType::BF16).is_err());
        assert!(matches!(
            select("cpu", "f16"),
            Ok((Device::Cpu, DType::F16))
        ));
        assert!(select("cpu", "bf16").is_err());
        if !cuda_compiled() {
            assert!(matches!(select_device(DeviceChoice::Auto), Ok(Device::Cpu)));
            let e = select_device(DeviceChoice::Cuda(0));
            assert!(matches!(e, Err(EngineError::Device(_))));
        }
    }
}
