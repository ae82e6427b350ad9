//! GRPO baselines for *Think Outside the Policy: In-Context Steered Policy Optimization*
//! (arXiv 2510.26519): `icpo_math` with Implicit Expert Forcing off.
//!
//! `cargo run --release --example grpo_math` runs the embedded default with GRPO only;
//! `--config FILE` runs a real setup with `algorithm.ief = false`.

#![allow(missing_docs)] // an example, not an API

#[path = "icpo_math.rs"]
#[allow(dead_code)]
mod icpo_math;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let args = icpo_math::Args::parse();
    match &args.config {
        Some(path) => icpo_math::real_run(path, &args.overrides(), args.resume.as_deref(), false),
        None => {
            let mut s = icpo_math::common::Settings::default_run(args.out.join("grpo_only"));
            s.seed = args.seed;
            s.methods = vec!["GRPO"];
            let report = icpo_math::common::run(&s)?;
            println!("\n{}", report.table);
            Ok(())
        }
    }
}
