//! The crate's error type.

/// Invalid input to one of the reference functions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A setting is out of its valid range.
    #[error("`{field}` = {value}: {message}")]
    OutOfRange {
        /// The setting's name (as in the config).
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// The valid range.
        message: &'static str,
    },
    /// Inputs whose lengths or shapes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinite value in an input.
    #[error("non-finite value {value} in `{input}` at {index}")]
    NonFinite {
        /// Which input.
        input: &'static str,
        /// Where (e.g. `[3][17]`).
        index: String,
        /// The value.
        value: f64,
    },
    /// An unknown variant name.
    #[error("unknown {kind} `{name}` (valid: {valid})")]
    UnknownName {
        /// What was being named (e.g. `advantage estimator`).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        valid: &'static str,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn check_finite(input: &'static str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(CoreError::NonFinite { input, index: format!("[{i}]"), value: values[i] }),
        None => Ok(()),
    }
}

pub(crate) fn check_finite_2d(input: &'static str, rows: &[Vec<f64>]) -> Result<()> {
    for (i, row) in rows.iter().enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                input,
                index: format!("[{i}][{j}]"),
                value: row[j],
            });
        }
    }
    Ok(())
}

/// Implements `FromStr` for a serde-named enum: an unknown name lists the valid ones.
macro_rules! named_enum {
    ($ty:ty, $kind:literal, [$($name:literal => $variant:expr),+ $(,)?]) => {
        impl $ty {
            /// The valid names, comma-separated.
            pub const VALID_NAMES: &'static str = concat!($($name, ", "),+);

            /// The serde name of this variant.
            pub fn name(&self) -> &'static str {
                $(if *self == $variant { return $name; })+
                ""
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::CoreError;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err($crate::error::CoreError::UnknownName {
                        kind: $kind,
                        name: s.to_string(),
                        valid: Self::VALID_NAMES.trim_end_matches(", "),
                    }),
                }
            }
        }
    };
}
pub(crate) use named_enum;
