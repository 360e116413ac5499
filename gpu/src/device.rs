//! The `device` parameter: where a stage runs its model.

use std::fmt;
use std::str::FromStr;

/// `cpu` (the default) or `cuda:N`, the N-th device the driver lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device `{text}`: expected `cpu` or `cuda:N` (N the device's index, from 0)")]
pub struct DeviceParseError {
    pub text: String,
}

impl FromStr for Device {
    type Err = DeviceParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DeviceParseError {
            text: s.to_string(),
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(err)?;
                // Digits only: `cuda:+1` and `cuda: 1` are not indices.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                n.parse().map(Device::Cuda).map_err(|_| err())
            }
        }
    }
}

impl TryFrom<String> for Device {
    type Error = DeviceParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_indices_only() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda:0".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:7".parse(), Ok(Device::Cuda(7)));
        for bad in [
            "",
            "gpu",
            "cuda",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "CUDA:0",
            "cuda:99999999999",
        ] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        let d: Device = serde_json::from_str("\"cuda:1\"").unwrap();
        assert_eq!(d, Device::Cuda(1));
        assert!(serde_json::from_str::<Device>("\"tpu\"").is_err());
    }
}
