//! ICPO on maths: *Think Outside the Policy: In-Context Steered Policy Optimization*
//! (Huang et al., arXiv 2510.26519), on icpo-rs.
//!
//! Not implemented yet: the rollout engine, trainer and synthetic task it needs are open issues.
//! Until then this example says what it will do and exits successfully, so that the README's
//! first command already works (and builds libtorch) on a fresh machine.

fn main() {
    println!(
        "icpo_math (placeholder)\n\
         \n\
         When the rollout engine, the trainer and the synthetic task land, this example will:\n\
         1. build a tiny Qwen3-architecture policy and a verifiable synthetic maths task in code;\n\
         2. warm it up with a short supervised phase on worked solutions;\n\
         3. train GRPO and ICPO (IEF + ERRS + annealed reward shaping) from the same start and seeds;\n\
         4. evaluate both on held-out problems, write metrics JSONL, a PNG plot and a final table.\n\
         With --config FILE it will run a real setup (configs/ will hold the paper's Qwen3 runs).\n\
         \n\
         What works today: the policy crate (Qwen2/Qwen3/Llama from Hugging Face checkpoints),\n\
         e.g. `cargo run --release -p icpo-cli -- logits --model testdata/tiny-qwen3 --ids 3,17,5 --out /tmp/l.safetensors`."
    );
    let cuda = tch::Cuda::is_available();
    println!("libtorch linked: CUDA available = {cuda}, CPU threads = {}", tch::get_num_threads());
}
