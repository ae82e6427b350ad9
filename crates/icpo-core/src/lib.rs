//! Reference implementations of the GRPO family and ICPO on plain slices.
//!
//! This crate will hold the spec's formulas written for clarity: group advantages (GRPO,
//! Dr.GRPO, RLOO, REINFORCE++), reward-shaping schedules γ(t), Expert Region Reject Sampling
//! bookkeeping and per-token policy losses. `icpo-loss` is tested against it. No libtorch.
//! Nothing is implemented yet (issue: "Advantage and loss kernels").
