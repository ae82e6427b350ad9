from typing import Any, Union

class ParsedAnswer(list[str]):
    text: str
    def __init__(self, text: str) -> None: ...

def parse(pred: str, extraction_config: Any = None, fallback_mode: Any = None,
          extraction_mode: Any = None, parsing_timeout: Any = None, raise_on_error: bool = False,
          **kwargs: Any) -> ParsedAnswer: ...
def verify(gold: Union[ParsedAnswer, str, list[str]], target: Union[ParsedAnswer, str, list[str]],
           float_rounding: int = 6, numeric_precision: int = 15, strict: bool = True,
           allow_set_relation_comp: bool = False, timeout_seconds: Any = None,
           raise_on_error: bool = False, **kwargs: Any) -> bool: ...
