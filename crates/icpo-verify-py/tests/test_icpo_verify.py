"""The icpo_verify wheel from Python: the same verdicts as the Rust API on Math-Verify's labelled
cases, batches equal to loops, threads and forked workers giving identical answers, hostile
inputs in bounded time, and the verl / TRL / math_verify-shaped entry points."""
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import icpo_verify
from icpo_verify import compat, compute_score, explain, math_reward, verify, verify_batch

HERE = os.path.dirname(os.path.abspath(__file__))
CONFORMANCE = os.path.join(HERE, "../../../../shared/conformance/math_verify_cases.jsonl")


def conformance_cases():
    with open(CONFORMANCE) as f:
        return [json.loads(line) for line in f if line.strip()]


def pairs():
    cases = conformance_cases()
    return [c["gold"] for c in cases], [c["pred"] for c in cases]


def test_conformance_verdicts_equal_the_rust_api():
    cases = conformance_cases()
    got = [
        verify(c["gold"], c["pred"], float_rounding=c["config"].get("precision", 6))
        for c in cases
    ]
    agree = sum(int(g) == c["expected"] for g, c in zip(got, cases))
    assert agree >= 101, f"{agree}/{len(cases)}"
    rust = os.environ.get("ICPO_RUST_VERDICTS")
    if rust is None:
        pytest.skip("run through `cargo test -p icpo-verify-py` to compare with the Rust API")
    with open(rust) as f:
        want = json.load(f)
    assert got == want


def test_batch_equals_a_loop_and_threads_agree():
    golds, preds = pairs()
    loop = [verify(g, p) for g, p in zip(golds, preds)]
    assert verify_batch(golds, preds) == loop
    assert verify_batch(golds, preds, threads=1) == loop
    assert verify_batch(golds, preds, threads=3) == loop
    assert verify_batch([], []) == []
    results = []
    lock = threading.Lock()

    def work(_):
        r = [verify(g, p) for g, p in zip(golds, preds)]
        with lock:
            results.append(r)

    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(work, range(8)))
    assert len(results) == 8 and all(r == loop for r in results)


def _child(q, golds, preds):
    q.put(verify_batch(golds, preds, threads=2))


def test_forked_workers_give_the_same_answers():
    golds, preds = pairs()
    want = verify_batch(golds, preds, threads=2)  # threads used in the parent before the fork
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, golds, preds))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and got == want


def test_hostile_inputs_end_in_bounded_time():
    mb = 1 << 20
    cases = [
        ("5", "\\boxed{" + "*".join(["2"] * 50_000) + "}"),
        ("5", "$" + "\\cdot ".join(["2"] * 50_000) + "$"),
        ("5", "\\boxed{3" + "!" * 100_000 + "}"),
        ("ab" * 100_000, "\\boxed{5}"),
        ("7" * mb, "7" * (mb - 1) + "8"),
        ("5", "\\boxed{1} and " * 10_000),
        ("5", "\\(" * (mb // 2)),
    ]
    for gold, pred in cases:
        t = time.perf_counter()
        assert verify(gold, pred) is False
        assert time.perf_counter() - t < 2.0
    assert verify_batch([g for g, _ in cases], [p for _, p in cases], threads=2) == [False] * len(cases)


def test_explain_names_answers_family_and_rule():
    v = explain("1 \\le y \\le 4", "so $\\boxed{[1,4]}$")
    assert v == {
        "correct": True,
        "gold_answer": "1 \\le y \\le 4",
        "pred_answer": "[1,4]",
        "family": "relation",
        "rule": "relation against the set it describes",
        "reason": "equivalent",
    }
    v = explain("3", "no answer here")
    assert v["correct"] is False and v["pred_answer"] is None


def test_verl_and_trl_entry_points():
    assert compute_score("openr1", "so $\\boxed{\\frac{1}{2}}$", "0.5") == 1.0
    assert compute_score("openr1", "so $\\boxed{3}$", "0.5", extra_info={"index": 1}) == 0.0
    assert compute_score("math", "the answer is $\\boxed{4}$", 4) == 1.0
    completions = [
        "so $\\boxed{2}$",
        [{"role": "assistant", "content": "it is $\\boxed{3}$"}],
        "no idea",
    ]
    assert math_reward(completions, ["2", "3", "3"], prompts=["a", "b", "c"]) == [1.0, 1.0, 0.0]


def test_math_verify_shaped_shim():
    gold = compat.parse("$\\frac{1}{2}$")
    assert isinstance(gold, list) and gold == ["$\\frac{1}{2}$"]
    assert compat.verify(gold, compat.parse("so $\\boxed{0.5}$"), timeout_seconds=5) is True
    assert compat.verify("$3$", "$\\boxed{4}$") is False
    assert compat.parse("   ") == []


def test_errors_are_python_exceptions():
    with pytest.raises(TypeError):
        verify(1, "2")
    with pytest.raises(ValueError, match="golds"):
        verify_batch(["1"], [])
    with pytest.raises(ValueError, match="threads"):
        verify_batch(["1"], ["1"], threads=0)
    with pytest.raises(ValueError, match="float_rounding"):
        verify("1", "1", float_rounding=99)
    with pytest.raises(TypeError):
        math_reward([3], ["3"])
    with pytest.raises(TypeError):
        compat.verify(3, "3")


def test_the_wheel_imports_in_a_fresh_venv(tmp_path):
    wheel = os.environ.get("ICPO_WHEEL")
    if wheel is None:
        pytest.skip("run through `cargo test -p icpo-verify-py`, which builds the wheel")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    out = subprocess.run(
        [str(py), "-c", "import icpo_verify; print(icpo_verify.verify('2', '$\\\\boxed{2}$'), icpo_verify.__version__)"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    assert out == ["True", icpo_verify.__version__]
