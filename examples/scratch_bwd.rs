use std::time::Instant;
use icpo::policy::{CausalLm, LoadOptions};
use tch::{Kind, Tensor};
fn main() {
    tch::set_num_threads(2);
    let m = CausalLm::load("target/bench-qwen3", LoadOptions::default()).unwrap();
    let p = Tensor::randint(512, [64, 24], (Kind::Int64, tch::Device::Cpu));
    let r = Tensor::randint(512, [64, 64], (Kind::Int64, tch::Device::Cpu));
    for _ in 0..3 {
        let t = Instant::now();
        let out = tch::no_grad(|| m.response_logprobs(&p, &p.ones_like(), &r, &r.ones_like(), false).unwrap());
        let t1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out2 = m.response_logprobs(&p, &p.ones_like(), &r, &r.ones_like(), false).unwrap();
        let t2 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        out2.logprobs.sum(Kind::Float).backward();
        let t3 = t.elapsed().as_secs_f64();
        println!("fwd nograd {t1:.3} fwd grad {t2:.3} bwd {t3:.3} {}", out.logprobs.size()[0]);
    }
}
