"""icpo_verify: Math-Verify's answers for RLVR rewards, in Rust — thread-safe, no signals.

    >>> from icpo_verify import verify
    >>> verify("\\frac{1}{2}", "... so the answer is $\\boxed{0.5}$.")
    True

`verify` and `verify_batch` take raw strings (the gold may be a bare answer or a full
solution, the prediction a full response); `explain` says what was extracted and which rule
decided. `compute_score` is verl's reward-function signature and `math_reward` TRL's; the
`icpo_verify.compat` module mirrors `math_verify.parse` / `math_verify.verify`.
"""

from ._icpo_verify import __version__, explain, verify, verify_batch

__all__ = [
    "__version__",
    "compute_score",
    "explain",
    "math_reward",
    "verify",
    "verify_batch",
]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's reward function: 1.0 when `solution_str` answers `ground_truth`, else 0.0.

    In a verl config: ``custom_reward_function.path=<site-packages>/icpo_verify/__init__.py``
    and ``custom_reward_function.name=compute_score``. `data_source` and `extra_info` are
    accepted and unused (every source is scored as maths).
    """
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a str, got {type(solution_str).__name__}")
    if isinstance(ground_truth, (int, float)):
        ground_truth = str(ground_truth)
    if not isinstance(ground_truth, str):
        raise TypeError(f"ground_truth must be a str, got {type(ground_truth).__name__}")
    return 1.0 if verify(ground_truth, solution_str) else 0.0


def _completion_text(completion):
    # TRL passes plain strings, or conversations: lists of {"role", "content"} messages.
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(
        "each completion must be a str or a list of {'role', 'content'} messages, "
        f"got {type(completion).__name__}"
    )


def math_reward(completions, solution, **kwargs):
    """A TRL reward function: 1.0 per completion that answers its `solution`, else 0.0.

    ``GRPOTrainer(..., reward_funcs=[icpo_verify.math_reward])`` with a dataset column named
    ``solution`` (the gold answer, or a worked solution ending in ``\\boxed{}``). Scored in
    parallel with the GIL released; other dataset columns arrive in `kwargs` and are ignored.
    """
    if len(completions) != len(solution):
        raise ValueError(f"{len(completions)} completions but {len(solution)} solutions")
    texts = [_completion_text(c) for c in completions]
    golds = [str(s) for s in solution]
    return [1.0 if ok else 0.0 for ok in verify_batch(golds, texts)]
