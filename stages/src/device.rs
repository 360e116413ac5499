//! The `device` parameter of the stages that run the model (`midtrain`, `sft`, the
//! `checkpoint` policies of `rollout` and `humaneval`).
//!
//! `cpu` (the default, left out of the canonical config so that configs written before the
//! parameter keep their action keys) or `cuda:N`. The CUDA kernels exist and are compiled by
//! NVRTC (`gpu::kernels`), but the model does not run on them yet: `cuda:N` stops the stage
//! with that said, after checking the device is there, instead of computing on the CPU under
//! a GPU's name.

use anyhow::bail;
pub use gpu::Device;

/// For `#[serde(skip_serializing_if)]`: the default is not written.
pub fn is_cpu(d: &Device) -> bool {
    *d == Device::Cpu
}

/// Fails unless the model can run on `device` in this build and on this machine.
pub fn require_runnable(device: Device, stage: &str) -> anyhow::Result<()> {
    let Device::Cuda(n) = device else {
        return Ok(());
    };
    let probe = gpu::discover();
    let Some(g) = probe.gpus().iter().find(|g| g.ordinal == n) else {
        bail!(
            "{stage}: device = \"cuda:{n}\", but this machine has no such GPU: {}",
            probe.describe()
        );
    };
    bail!(
        "{stage}: device = \"cuda:{n}\" ({}): the model's CUDA path is not built yet (its kernels \
         compile, in gpu::kernels, but training and generation do not run them); use device = \"cpu\"",
        g.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_left_out_of_the_canonical_config_and_cuda_is_kept() {
        let p: crate::train::Params = serde_json::from_str("{}").unwrap();
        assert_eq!(p.device, Device::Cpu);
        assert!(serde_json::to_value(&p).unwrap().get("device").is_none());
        let p: crate::train::Params = serde_json::from_str(r#"{"device": "cuda:1"}"#).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap()["device"], "cuda:1");
        let e = serde_json::from_str::<crate::train::Params>(r#"{"device": "gpu0"}"#).unwrap_err();
        assert!(e.to_string().contains("`gpu0`"), "{e}");
    }

    #[test]
    fn cuda_is_refused_with_the_reason_and_cpu_runs() {
        require_runnable(Device::Cpu, "midtrain").unwrap();
        let e = require_runnable(Device::Cuda(0), "midtrain")
            .unwrap_err()
            .to_string();
        if gpu::discover().gpus().is_empty() {
            assert!(e.contains("no such GPU") && e.contains("no GPU"), "{e}");
        } else {
            assert!(e.contains("not built yet"), "{e}");
        }
        assert!(e.starts_with("midtrain: device = \"cuda:0\""), "{e}");
    }
}
