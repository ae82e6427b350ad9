"""A `math_verify`-shaped shim: switch with an import change.

    from icpo_verify.compat import parse, verify   # was: from math_verify import parse, verify
    verify(parse("$\\frac{1}{2}$"), parse(response))

`parse` keeps the text (the Rust verifier extracts and parses it itself); `verify` accepts what
`parse` returned, or raw strings. Math-Verify's keyword arguments are accepted; `timeout_seconds`
is ignored because every call is bounded without signals, so the shim works in threads and
Ray actors where Math-Verify's timeouts do not.
"""

from . import _icpo_verify

__all__ = ["ParsedAnswer", "parse", "verify"]


class ParsedAnswer(list):
    """What `parse` returns: a one-element list holding the text (empty for empty text), as
    Math-Verify's `parse` returns a list."""

    def __init__(self, text):
        super().__init__([text] if text.strip() else [])
        self.text = text


def parse(pred, extraction_config=None, fallback_mode=None, extraction_mode=None,
          parsing_timeout=None, raise_on_error=False, **kwargs):
    """Keeps `pred` for `verify`; the extraction settings are accepted and unused."""
    if not isinstance(pred, str):
        raise TypeError(f"parse() takes a str, got {type(pred).__name__}")
    return ParsedAnswer(pred)


def _text(x, what):
    if isinstance(x, ParsedAnswer):
        return x.text
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(i, str) for i in x):
        return " ".join(x)
    raise TypeError(f"verify() takes what parse() returned or a str as {what}, got {type(x).__name__}")


def verify(gold, target, float_rounding=6, numeric_precision=15, strict=True,
           allow_set_relation_comp=False, timeout_seconds=None, raise_on_error=False, **kwargs):
    """Whether `target` answers `gold` (both as `parse` returned them, or raw strings)."""
    return _icpo_verify.verify(_text(gold, "gold"), _text(target, "target"),
                               strict=strict, float_rounding=float_rounding)
