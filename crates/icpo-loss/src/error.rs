//! The crate's error type.

/// Invalid inputs or settings of a loss kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LossError {
    /// Tensors whose shapes disagree; the message names the dims.
    #[error("shape error: {0}")]
    Shape(String),
    /// A NaN or infinite value where a real number is needed.
    #[error("non-finite value in `{0}` (at a response token)")]
    NonFinite(&'static str),
    /// An invalid setting (from icpo-core's validation).
    #[error(transparent)]
    Config(#[from] icpo_core::CoreError),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, LossError>;
