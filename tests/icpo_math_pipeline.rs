//! The default example's pipeline in a reduced size: it trains GRPO and ICPO from one warm
//! start and produces finite metrics, the plot and the table.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // tests may unwrap

#[path = "../examples/common/mod.rs"]
mod common;

#[test]
fn reduced_pipeline_produces_metrics_plot_and_table() {
    let out = std::env::temp_dir().join(format!("icpo-math-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut s = common::Settings::default_run(out.clone());
    s.sft_steps = 20;
    s.sft_batch = 8;
    s.rl_steps = 3;
    s.batch_prompts = 4;
    s.group_size = 4;
    s.eval_every = 3;
    s.quiet = true;
    let report = common::run(&s).unwrap();
    assert_eq!(report.methods.len(), 2);
    for m in &report.methods {
        assert_eq!(m.metrics.len(), 3, "{}", m.name);
        for step in &m.metrics {
            for key in ["actor/pg_loss", "actor/grad_norm", "reward/on_policy_mean"] {
                assert!(step[key].is_finite(), "{} {key} = {}", m.name, step[key]);
            }
            // γ(t) and the IEF metrics exist for ICPO only.
            let ief_keys = step.keys().any(|k| k.starts_with("ief/") || k == "shaping/gamma");
            assert_eq!(ief_keys, m.name == "ICPO", "{}", m.name);
        }
        assert!(out.join(m.name.to_lowercase()).join("metrics.jsonl").exists());
        assert!((0.0..=1.0).contains(&m.after.all));
    }
    let icpo = &report.methods[1];
    assert!(icpo.metrics.iter().all(|m| m["ief/success_rate"].is_finite()));
    let png = std::fs::read(&report.plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    assert!(
        report.table.contains("| GRPO |")
            && report.table.contains("| ICPO |")
            && report.table.contains("seed 7")
    );
    assert!(out.join("table.md").exists() && out.join("report.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}
