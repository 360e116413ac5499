//! Qwen2 in candle for the daVinci pipeline: the model ([`qwen2`]) over fused CPU kernels with
//! their backward passes ([`ops`]), seeded initialisation ([`rng`]), HF-layout checkpoints
//! ([`checkpoint`]), generation with a KV cache ([`generate`]), trajectories and the ChatML
//! template ([`chat`]), and the training loop ([`train`]). The device is a parameter
//! everywhere (`candle_core::Device`); only the CPU backend is compiled in today.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod ops;
pub mod qwen2;
pub mod rng;
pub mod train;

pub use candle_core::Device;
pub use config::Qwen2Config;
pub use qwen2::{KvCache, Qwen2};

/// CPU features relevant to kernel speed, for recording with a run.
pub fn cpu_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ]
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![("neon", std::arch::is_aarch64_feature_detected!("neon"))]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

/// Threads the CPU kernels use (candle's setting: `RAYON_NUM_THREADS` or all cores).
pub fn num_threads() -> usize {
    candle_core::utils::get_num_threads()
}
