//! Math answer verification for RLVR rewards.
//!
//! This crate will hold answer extraction from model responses (`\boxed{}` and fallbacks),
//! normalisation of LaTeX answers, parsing into expression trees and equivalence checking with
//! Math-Verify's rules, plus the `Reward` trait the trainer uses. It does not depend on libtorch.
//! Nothing is implemented yet (issue: "Math answer verifier").
