"""The relevance judge: does a conversation stay on its topic and convey its word?

A method turns a conversation into a few *score requests* (token sequences and which
log-probabilities to read back from them) and turns the readings into one score in [0, 1].
The requests are plain prefills: the batched engine serves them beside generation steps
(the worker scores with the model it already holds), and :func:`read_with_llama` serves them
one at a time on any ``llama_cpp.Llama`` (calibration, ``producer judge``, the reference the
engine is tested against).
"""

from convfarm.judge.relevance import (
    JudgeMethod,
    ScoreReading,
    ScoreRequest,
    Tokenize,
    default_method,
    method_for,
    read_with_llama,
    relevance,
)

__all__ = [
    "JudgeMethod",
    "ScoreReading",
    "ScoreRequest",
    "Tokenize",
    "default_method",
    "method_for",
    "read_with_llama",
    "relevance",
]
