//! The `icpo` binary end to end: `icpo logits` against transformers' logits, its errors, and
//! its link to libtorch_cuda.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::process::Command;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn icpo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_icpo"))
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("icpo-cli-{}-{name}", std::process::id()))
}

#[test]
fn logits_match_transformers() {
    for model in ["tiny-qwen2", "tiny-qwen3", "tiny-llama"] {
        let golden =
            tch::Tensor::read_safetensors(testdata(model).join("golden.safetensors")).unwrap();
        let get = |k: &str| golden.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
        let ids: Vec<i64> = Vec::try_from(&get("single_ids")).unwrap();
        let ids = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let out = tmp(&format!("{model}.safetensors"));
        let status = icpo()
            .args(["logits", "--model"])
            .arg(testdata(model))
            .args(["--ids", &ids, "--out"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{model}");
        let written = tch::Tensor::read_safetensors(&out).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].0, "logits");
        let logits = &written[0].1;
        let want = get("single_logits");
        assert_eq!(logits.size(), want.size(), "{model}: [T, V]");
        assert_eq!(logits.kind(), tch::Kind::Float);
        let d = (logits - &want).abs().max().double_value(&[]);
        assert!(d <= 1e-4, "{model}: max |Δlogit| = {d:e}");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = tmp("never.safetensors");
    let run = |args: &[&str]| {
        let o = icpo().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let model = testdata("tiny-qwen3");
    let model = model.to_str().unwrap();
    let o = out.to_str().unwrap();
    let e = run(&["logits", "--model", model, "--ids", "3,x,5", "--out", o]);
    assert!(e.contains("item 2") && e.contains("`x`"), "{e}");
    let e = run(&["logits", "--model", model, "--ids", "3,99999", "--out", o]);
    assert!(e.contains("vocab_size = 384"), "{e}");
    let e = run(&["logits", "--model", "/nonexistent/model", "--ids", "3", "--out", o]);
    assert!(e.contains("/nonexistent/model/config.json"), "{e}");
    let e = run(&["logits", "--model", model, "--ids", "3", "--out", o, "--device", "tpu"]);
    assert!(e.contains("unknown device `tpu`"), "{e}");
    assert!(!out.exists(), "nothing written on error");
}

/// torch_cuda must be a real dynamic dependency, or CUDA is invisible on a GPU machine.
#[test]
fn binary_links_libtorch_cuda() {
    let out = Command::new("ldd").arg(env!("CARGO_BIN_EXE_icpo")).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch_cuda.so"), "ldd icpo:\n{text}");
    assert!(
        !text.contains("libtorch_cpu.so => not found"),
        "libtorch resolved through the rpath:\n{text}"
    );
}

#[test]
fn verify_prints_one_verdict_per_line_in_order() {
    let input = tmp("verify.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"gold\": \"\\\\frac{1}{2}\", \"pred\": \"so \\\\boxed{0.5}\", \"id\": 1}\n",
            "{\"gold\": \"3\", \"pred\": \"the answer is $4$\"}\n",
            "{\"gold\": 7, \"pred\": \"\\\\boxed{7}\"}\n",
        ),
    )
    .unwrap();
    let o =
        icpo().args(["verify", "--input"]).arg(&input).args(["--threads", "2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> =
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines, ["{\"correct\":true}", "{\"correct\":false}", "{\"correct\":true}"]);

    std::fs::write(
        &input,
        "{\"gold\": \"1\", \"pred\": \"1\"}\n{\"gold\": \"1\"\n{\"pred\": \"2\"}\n",
    )
    .unwrap();
    let o = icpo().args(["verify", "--input"]).arg(&input).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("verify.jsonl:2") && err.contains("malformed JSON"), "{err}");
    assert!(o.stdout.is_empty(), "nothing printed before the error");

    let o = icpo().args(["verify", "--skip-bad", "--input"]).arg(&input).output().unwrap();
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["correct"], true);
    assert_eq!(lines[1]["correct"], false);
    assert!(lines[1]["error"].as_str().unwrap().contains("malformed"));
    assert!(lines[2]["error"].as_str().unwrap().contains("gold"));
}

#[test]
fn eval_writes_a_table_and_every_response() {
    // A tiny benchmark whose gold answers a random model cannot hit, and a table of it.
    let dir = tmp("evaldir");
    std::fs::create_dir_all(&dir).unwrap();
    let bench = dir.join("tinybench.jsonl");
    std::fs::write(&bench, "{\"id\": \"a\", \"problem\": \"1+1?\", \"answer\": \"\\\\frac{123}{457}\"}\n{\"id\": \"b\", \"problem\": \"2+2?\", \"answer\": \"99999\"}\n").unwrap();
    let out = tmp("responses.jsonl");
    let o = icpo()
        .args(["eval", "--model"])
        .arg(testdata("tiny-qwen3"))
        .arg("--benchmark")
        .arg(&bench)
        .arg("--out")
        .arg(&out)
        .args(["--samples", "2", "--max-new-tokens", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| tinybench | 2 | avg@2 | 0.0% |") && stdout.contains("| average |"),
        "{stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "2 problems × 2 samples");
    assert!(lines
        .iter()
        .all(|l| l["reward"] == 0.0 && l["benchmark"] == "tinybench" && l["response"].is_string()));
}

/// The one JSONL reader's rules: a BOM and blank lines are ignored, and a line that is not
/// UTF-8 is a bad line with its number, which `--skip-bad` skips.
#[test]
fn verify_reads_inputs_by_the_common_rules() {
    let input = tmp("rules.jsonl");
    let mut bytes = b"\xEF\xBB\xBF{\"gold\": \"1\", \"pred\": \"\\\\boxed{1}\"}\n\n".to_vec();
    bytes.extend_from_slice(
        b"{\"gold\": \"2\", \"pred\": \"\xff\"}\n{\"gold\": \"3\", \"pred\": \"3\"}\n\n",
    );
    std::fs::write(&input, &bytes).unwrap();
    let o = icpo().args(["verify", "--input"]).arg(&input).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rules.jsonl:3") && err.contains("not UTF-8"), "{err}");
    let o = icpo().args(["verify", "--skip-bad", "--input"]).arg(&input).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one verdict per non-blank line");
    assert_eq!(lines[0]["correct"], true, "the BOM is not part of line 1");
    assert!(lines[1]["error"].as_str().unwrap().contains("line 3"));
    assert_eq!(lines[2]["correct"], true);
    std::fs::remove_file(&input).unwrap();
}

#[test]
fn verify_refuses_absurd_thread_counts_at_once() {
    let input = tmp("threads.jsonl");
    std::fs::write(&input, "{\"gold\": \"1\", \"pred\": \"1\"}\n").unwrap();
    for n in ["100000", "0"] {
        let t = std::time::Instant::now();
        let o = icpo().args(["verify", "--threads", n, "--input"]).arg(&input).output().unwrap();
        assert!(!o.status.success());
        assert!(t.elapsed().as_secs_f64() < 10.0);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--threads") && err.contains("out of range"), "{err}");
    }
    std::fs::remove_file(&input).unwrap();
}

/// Benchmarks and `--out` are checked before the first generation.
#[test]
fn eval_checks_its_inputs_before_generating() {
    let dir = tmp("evalcheck");
    std::fs::create_dir_all(&dir).unwrap();
    let bench = dir.join("ok.jsonl");
    std::fs::write(&bench, "{\"problem\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
    let out = dir.join("responses.jsonl");
    let eval = |benches: &[&std::path::Path], out: &std::path::Path| {
        let mut c = icpo();
        c.args(["eval", "--model"]).arg(testdata("tiny-qwen3"));
        for b in benches {
            c.arg("--benchmark").arg(b);
        }
        let o = c.arg("--out").arg(out).args(["--max-new-tokens", "200"]).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let missing = dir.join("missing.jsonl");
    let e = eval(&[&bench, &missing], &out);
    assert!(e.contains("missing.jsonl"), "{e}");
    assert!(!e.contains("ok: "), "nothing generated before the check: {e}");
    assert!(!out.exists());
    let bad_out = dir.join("no/such/dir/responses.jsonl");
    let e = eval(&[&bench], &bad_out);
    assert!(e.contains("--out") && e.contains("no/such/dir"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_explain_names_the_family_and_rule() {
    let input = tmp("explain.jsonl");
    std::fs::write(
        &input,
        "{\"gold\": \"1 \\\\le y \\\\le 4\", \"pred\": \"so $\\\\boxed{[1,4]}$\"}\n{\"gold\": \"y = 3x + 2\", \"pred\": \"$2y - 6x - 4 = 0$\"}\n",
    )
    .unwrap();
    let o = icpo().args(["verify", "--explain", "--input"]).arg(&input).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["correct"], true);
    assert_eq!(lines[0]["family"], "relation");
    assert_eq!(lines[0]["rule"], "relation against the set it describes");
    assert_eq!(lines[0]["pred_answer"], "[1,4]");
    assert_eq!(
        (lines[1]["correct"].clone(), lines[1]["family"].clone()),
        (true.into(), "equation".into())
    );
    std::fs::remove_file(&input).unwrap();
}
