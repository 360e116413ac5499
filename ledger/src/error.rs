use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The OS error is part of the message and not a `source`, so a printed chain says it once.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
    Index(sled::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        Error::Index(e)
    }
}

impl Error {
    pub fn io(path: &Path, error: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}
