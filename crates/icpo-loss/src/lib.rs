//! GRPO-family and ICPO loss kernels on batched `(batch, response_len)` libtorch tensors.
//!
//! This crate will hold the differentiable policy loss (PPO clip with dual clip, the ICPO/LUFFY
//! off-policy shaping term), KL estimators and aggregation modes, checked against the reference
//! formulas of `icpo-core`. Nothing is implemented yet (issue: "Advantage and loss kernels").
