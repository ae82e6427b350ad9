//! The crate's error type.

/// Errors of rendezvous and collectives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A launcher variable (`RANK`, `WORLD_SIZE`, ...) is missing or malformed; names it.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A rank did not reach a collective in time: it died, hangs, or runs something else.
    #[error("rank {rank} did not reach `{what}` within {seconds} s (it died, hangs, or runs a different step); this is rank {me}")]
    Timeout {
        /// The rank waited for.
        rank: usize,
        /// The rank reporting.
        me: usize,
        /// The collective.
        what: String,
        /// The timeout.
        seconds: f64,
    },
    /// Ranks disagree on something that must be equal (config, code version, shapes).
    #[error("rank {rank} differs from rank {me} in {what}: {theirs} vs {ours}")]
    Mismatch {
        /// The rank that differs.
        rank: usize,
        /// The rank reporting.
        me: usize,
        /// What differs.
        what: String,
        /// Its value.
        theirs: String,
        /// This rank's value.
        ours: String,
    },
    /// The store (c10d's TCPStore) failed.
    #[error("c10d store: {0}")]
    Store(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, DistError>;
