//! Where and in which dtype a model is put ([`LoadOptions`], [`DeviceOpt`]).

use tch::Device;

use crate::config::DType;

/// Where and in which dtype to put a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Device of the weights (default CPU).
    pub device: DeviceOpt,
    /// Weight dtype (default f32, whatever the checkpoint stores).
    pub dtype: DType,
    /// Dtype of activations and products; `None` (default) is `dtype`. `bfloat16` with f32
    /// weights is mixed precision, as verl and TRL train: the weights (and the optimiser that
    /// updates them) stay f32, each forward pass multiplies by bf16 casts of them, and
    /// gradients flow back to the f32 weights through the casts.
    pub compute_dtype: Option<DType>,
}

/// A `tch::Device` with a `Default` (CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeviceOpt {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device `n`.
    Cuda(usize),
}

impl std::str::FromStr for DeviceOpt {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceOpt::Cpu),
            "cuda" => Ok(DeviceOpt::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceOpt::Cuda(n)),
                _ => Err(format!("unknown device `{s}` (valid: cpu, cuda, cuda:N)")),
            },
        }
    }
}

impl DeviceOpt {
    /// The libtorch device.
    pub fn device(self) -> Device {
        match self {
            DeviceOpt::Cpu => Device::Cpu,
            DeviceOpt::Cuda(n) => Device::Cuda(n),
        }
    }
}
