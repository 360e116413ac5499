//! The GPUs of this machine, through the CUDA driver API.

use cudarc::driver::{result, sys};
use std::sync::OnceLock;

/// One device as the driver lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    /// Its index: `cuda:N`.
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
    /// (major, minor): 9.0 for Hopper, 8.0 for A100.
    pub compute_capability: (u32, u32),
}

/// What the driver says about this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Probe {
    /// No `libcuda` could be loaded: no NVIDIA driver (as on CI).
    NoDriver,
    /// The driver is there but did not answer (no device, a driver/kernel mismatch, ...).
    Failed { call: String, error: String },
    /// The driver's version and CUDA version it supports, and its devices.
    Found {
        /// The CUDA version the driver supports, as `cuDriverGetVersion` reports it
        /// (12080 → 12.8).
        cuda_version: (u32, u32),
        gpus: Vec<GpuInfo>,
    },
}

impl Probe {
    /// The devices found (none unless [`Probe::Found`]).
    pub fn gpus(&self) -> &[GpuInfo] {
        match self {
            Probe::Found { gpus, .. } => gpus,
            _ => &[],
        }
    }

    /// One line for a step's environment: `NVIDIA H200 (cc 9.0, 139.8 GiB) ...; CUDA 12.8`,
    /// or `no GPU (...)` with the reason.
    pub fn describe(&self) -> String {
        match self {
            Probe::NoDriver => "no GPU (no NVIDIA driver: libcuda not found)".to_string(),
            Probe::Failed { call, error } => format!("no GPU ({call}: {error})"),
            Probe::Found { gpus, .. } if gpus.is_empty() => {
                "no GPU (the driver lists no device)".to_string()
            }
            Probe::Found { cuda_version, gpus } => {
                let list: Vec<String> = gpus
                    .iter()
                    .map(|g| {
                        format!(
                            "cuda:{} {} (cc {}.{}, {:.1} GiB)",
                            g.ordinal,
                            g.name,
                            g.compute_capability.0,
                            g.compute_capability.1,
                            g.memory_bytes as f64 / (1u64 << 30) as f64
                        )
                    })
                    .collect();
                format!(
                    "{}; driver CUDA {}.{}",
                    list.join(", "),
                    cuda_version.0,
                    cuda_version.1
                )
            }
        }
    }
}

/// The probe of this process, made once: the driver's answer does not change while it runs.
pub fn discover() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Asks the driver now (see [`discover`] for the cached answer).
pub fn probe() -> Probe {
    // SAFETY: only tries to dlopen the driver library by its usual names; loading it runs the
    // driver's initialisers, which is what every CUDA program does first.
    if !unsafe { sys::is_culib_present() } {
        return Probe::NoDriver;
    }
    match devices() {
        Ok(probe) => probe,
        Err((call, e)) => match e.0 {
            // No device is an answer, not a failure.
            sys::CUresult::CUDA_ERROR_NO_DEVICE => Probe::Found {
                cuda_version: driver_version().unwrap_or((0, 0)),
                gpus: Vec::new(),
            },
            _ => Probe::Failed {
                call: call.to_string(),
                error: e.to_string(),
            },
        },
    }
}

type Failure = (&'static str, result::DriverError);

fn driver_version() -> Result<(u32, u32), Failure> {
    let mut v = 0i32;
    // SAFETY: `cuDriverGetVersion` writes one int through the pointer, which is valid for the
    // call; it needs no `cuInit`.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| ("cuDriverGetVersion", e))?;
    let v = v.max(0) as u32;
    Ok((v / 1000, (v % 1000) / 10))
}

fn devices() -> Result<Probe, Failure> {
    result::init().map_err(|e| ("cuInit", e))?;
    let cuda_version = driver_version()?;
    let count = result::device::get_count().map_err(|e| ("cuDeviceGetCount", e))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) {
        let dev = result::device::get(ordinal).map_err(|e| ("cuDeviceGet", e))?;
        let name = result::device::get_name(dev).map_err(|e| ("cuDeviceGetName", e))?;
        // SAFETY: `dev` is a handle the driver just gave for an index it listed, after cuInit.
        let memory =
            unsafe { result::device::total_mem(dev) }.map_err(|e| ("cuDeviceTotalMem", e))?;
        let attr = |a| {
            // SAFETY: as above; the attribute is one of the driver's enum values.
            unsafe { result::device::get_attribute(dev, a) }
                .map(|v| v.max(0) as u32)
                .map_err(|e| ("cuDeviceGetAttribute", e))
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        gpus.push(GpuInfo {
            ordinal: ordinal as u32,
            name,
            memory_bytes: memory as u64,
            compute_capability: (major, minor),
        });
    }
    Ok(Probe::Found { cuda_version, gpus })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_devices_or_the_reason() {
        assert!(Probe::NoDriver
            .describe()
            .starts_with("no GPU (no NVIDIA driver"));
        let found = Probe::Found {
            cuda_version: (12, 8),
            gpus: vec![GpuInfo {
                ordinal: 0,
                name: "NVIDIA H200".into(),
                memory_bytes: 150_109_880_320,
                compute_capability: (9, 0),
            }],
        };
        assert_eq!(
            found.describe(),
            "cuda:0 NVIDIA H200 (cc 9.0, 139.8 GiB); driver CUDA 12.8"
        );
        assert_eq!(found.gpus().len(), 1);
        let failed = Probe::Failed {
            call: "cuInit".into(),
            error: "CUDA_ERROR_UNKNOWN".into(),
        };
        assert_eq!(failed.describe(), "no GPU (cuInit: CUDA_ERROR_UNKNOWN)");
    }

    /// On this machine: whatever the driver says, the probe answers without panicking, and
    /// twice the same.
    #[test]
    fn the_probe_answers_on_any_machine() {
        let p = probe();
        assert_eq!(&p, discover());
        if std::env::var_os("GPU_EXPECT_DEVICE").is_some() {
            assert!(!p.gpus().is_empty(), "GPU_EXPECT_DEVICE is set: {p:?}");
        }
    }
}
