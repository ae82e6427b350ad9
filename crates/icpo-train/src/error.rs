//! The crate's error type.

use std::path::PathBuf;

/// Errors of configuration, data, training and checkpointing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A config key is unknown, malformed or out of range; names the key.
    #[error("config `{key}`: {message}")]
    Config {
        /// `section.key`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A malformed data or checkpoint file line.
    #[error("{path}:{line}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 for the whole file).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Training cannot go on (e.g. too many non-finite updates in a row).
    #[error("training stopped: {0}")]
    Aborted(String),
    /// From the policy crate.
    #[error(transparent)]
    Policy(#[from] icpo_policy::PolicyError),
    /// From the rollout crate.
    #[error(transparent)]
    Rollout(#[from] icpo_rollout::RolloutError),
    /// From the loss crate.
    #[error(transparent)]
    Loss(#[from] icpo_loss::LossError),
    /// From the reference maths.
    #[error(transparent)]
    Core(#[from] icpo_core::CoreError),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |error| TrainError::Io { path, error }
}

/// [`icpo_policy::write_atomic`] (temporary file, flushed, renamed) with the file named in the
/// error.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    icpo_policy::write_atomic(path, bytes).map_err(io_err(path))
}
