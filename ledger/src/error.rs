use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("`{prefix}` is ambiguous; it matches:\n  {}", candidates.join("\n  "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Stage(String),
    #[error("index: {0}")]
    Index(#[from] sled::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
