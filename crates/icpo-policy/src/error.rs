//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading, running or saving a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (shown in the message, so not a `source()`).
        error: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: malformed JSON: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (it carries line and column).
        error: serde_json::Error,
    },
    /// A configuration value is missing, out of range or unsupported.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The file the value came from.
        path: PathBuf,
        /// The offending field, with Hugging Face's name.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A weight tensor is missing, mis-shaped or of an unsupported dtype.
    #[error("{file}: tensor `{name}`: {message}")]
    Tensor {
        /// The safetensors file (or index) where it was looked for.
        file: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A weight holds NaN or infinite values (named).
    #[error("weight `{0}` holds NaN or infinite values: the model's outputs would not be finite")]
    NonFinite(String),
    /// Inputs of the wrong shape or kind were passed to the model.
    #[error("shape error: {0}")]
    Shape(String),
    /// A tokenizer file could not be loaded or used.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// tokenizer.json or tokenizer_config.json.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, PolicyError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PolicyError {
    let path = path.into();
    move |error| PolicyError::Io { path, error }
}

/// Reads and parses a JSON file, naming the file in every error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|error| PolicyError::Json { path: path.into(), error })
}

/// [`crate::write_atomic`] with the file named in the error.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write_atomic(path, bytes).map_err(io_err(path))
}
