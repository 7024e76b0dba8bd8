"""llama.cpp's own generation (``Llama.create_completion``, streamed): what the engine at N = 1 is checked against.

The farm generates only through the batched engine; this is the reference it is held to,
kept with the tests: the same prompt tokens and sampling, the same streaming judge fed through
:meth:`~convfarm.rules.TranscriptJudge.feed_text`, llama-cpp-python's own sampler chain and
detokenisation. Free structure only (its grammar sampling differs by design: tests/test_grammar.py).
"""

from __future__ import annotations

from convfarm.engine import GenerationOutcome, GenerationRequest, ResidentModel, generation_params
from convfarm.judging import prompt_setup


def create_completion(model: ResidentModel, request: GenerationRequest) -> GenerationOutcome:
    config = request.config
    assert config.structure == "free", "the reference has no grammar"
    setup = prompt_setup(config, request.word)
    judge = model._judge_for(request, setup)
    outcome = GenerationOutcome(request=request)
    if judge.decided:
        outcome.take_verdict(judge)
        return outcome
    sampling = {**generation_params(config), "seed": request.seed, "stream": True}
    del sampling["mode"]
    if config.mode == "chat":
        tokens, stop = model._chat_prompt(config, setup)
        stream, outcome.prompt_tokens = model.llama.create_completion(tokens, stop=stop, **sampling), len(tokens)
    else:
        prompt = config.prompt_for(request.word)
        outcome.prompt_tokens = len(model.llama.tokenize(prompt.encode(), add_bos=True))
        stream = model.llama.create_completion(prompt, **sampling)
    pieces: list[str] = []
    finish = None
    try:
        for chunk in stream:
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            if choice.get("finish_reason") is None:
                outcome.completion_tokens += 1  # a chunk per sampled token; the last is a marker
            pieces.append(choice.get("text") or "")
            judge.feed_text(pieces[-1])
            if judge.decided:
                break  # leaving the generator stops decoding
    finally:
        stream.close()
    judge.end_stream(finish)
    outcome.take_verdict(judge)
    outcome.raw = "".join(pieces)
    return outcome
