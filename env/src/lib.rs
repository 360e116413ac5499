//! Executable environments for environmentally-native trajectories (D_env): base images built
//! with debootstrap and imported into a local Docker engine, sandboxed containers (no network,
//! resource limits, non-root, wall-clock limits, guaranteed removal), the SWE-agent tools over
//! a container, SWE-bench grading, and task instances in the SWE-bench schema.

pub mod container;
pub mod dataset;
pub mod engine;
pub mod grading;
pub mod image;
pub mod instance;
pub mod offline;
pub mod repo_image;
pub mod shell;
pub mod tools;

pub use container::{Container, ContainerSpec, ExecOutput, ExecRequest};
pub use engine::{Engine, EngineError};
