//! The crate's error type.

use std::path::PathBuf;

/// Errors of generation and prompt building.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// An out-of-range sampling or engine setting; names the field.
    #[error("`{field}` = {value}: {message}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// The valid range.
        message: &'static str,
    },
    /// A malformed data file line.
    #[error("{path}:{line}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Invalid inputs (empty prompt, too long prompt, ...).
    #[error("{0}")]
    Input(String),
    /// From the policy (model or tokenizer).
    #[error(transparent)]
    Policy(#[from] icpo_policy::PolicyError),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, RolloutError>;
