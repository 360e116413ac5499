//! The model's CUDA kernels (`kernels.cu`) and their compilation to PTX by NVRTC at run time.
//!
//! RMSNorm, RoPE, SwiGLU, causal grouped-query attention, the LM head's cross-entropy (forward
//! and backward) and AdamW, in f32 and bf16 storage, with fixed reduction orders and no atomics
//! (see the head of `kernels.cu`). The GEMMs are cuBLAS's, not here.

use cudarc::nvrtc::{self, CompileOptions, Ptx};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block that the row-reducing kernels assume.
pub const BLOCK: u32 = 256;

/// Every kernel, without its storage suffix; each exists as `<name>_f32` and `<name>_bf16`.
pub const TYPED: &[&str] = &[
    "rmsnorm_fwd",
    "rmsnorm_bwd",
    "rope_fwd",
    "rope_bwd",
    "swiglu_fwd",
    "swiglu_bwd",
    "attention_fwd",
    "attention_delta",
    "attention_bwd_dq",
    "attention_bwd_dkv",
    "cross_entropy_fwd",
    "cross_entropy_bwd",
    "adamw",
];

/// Kernels on f32 only (reductions of f32 partials).
pub const UNTYPED: &[&str] = &["sum_rows_f32", "sum_f32"];

/// Every kernel's entry name in the compiled module.
pub fn entry_names() -> Vec<String> {
    let mut names: Vec<String> = TYPED
        .iter()
        .flat_map(|k| [format!("{k}_f32"), format!("{k}_bf16")])
        .collect();
    names.extend(UNTYPED.iter().map(|s| s.to_string()));
    names
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    #[error("NVRTC is not installed (libnvrtc not found on the library path): the CUDA kernels cannot be compiled")]
    NoNvrtc,
    #[error("NVRTC refused the kernels for {arch}: {detail}")]
    Refused { arch: String, detail: String },
}

/// The kernels compiled for a virtual architecture such as `compute_90` (H100/H200) or
/// `compute_80` (A100), with IEEE division and square root and no contraction into FMA, so
/// the arithmetic is the CPU path's, operation for operation.
pub fn compile(arch: &'static str) -> Result<Ptx, CompileError> {
    // SAFETY: only tries to dlopen NVRTC by its usual names.
    if !unsafe { nvrtc::sys::is_culib_present() } {
        return Err(CompileError::NoNvrtc);
    }
    let opts = CompileOptions {
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(false),
        arch: Some(arch),
        name: Some("davinci_kernels.cu".into()),
        ..Default::default()
    };
    nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| CompileError::Refused {
        arch: arch.to_string(),
        detail: match e {
            nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })
}

/// The compute capability's virtual architecture name, for [`compile`].
pub fn arch_for(compute_capability: (u32, u32)) -> Option<&'static str> {
    Some(match compute_capability {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}
