//! NVIDIA GPUs through cudarc, with the CUDA libraries loaded at run time.
//!
//! - [`discover`]: the devices of this machine through the driver API (name, memory, compute
//!   capability, driver and CUDA versions), or why there are none. The ledger records it in
//!   every step's environment.
//! - [`Device`]: the `device` parameter of the model stages (`cpu`, `cuda:N`).
//! - [`kernels`]: the CUDA C source of the model's kernels and their compilation by NVRTC.
//!
//! Nothing here links CUDA: a machine without a driver gets [`Probe::NoDriver`], and a missing
//! NVRTC a [`kernels::CompileError::NoNvrtc`], never a panic.

mod device;
mod discover;
pub mod kernels;

pub use device::{Device, DeviceParseError};
pub use discover::{discover, probe, GpuInfo, Probe};
