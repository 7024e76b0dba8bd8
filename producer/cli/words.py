"""``producer words ...`` and ``producer config new``: word lists and topic configs.

Bad input (a missing file, an unreachable page, a page without terms, a config that would not
validate) is one line on stderr and exit status 2; nothing is written.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from convfarm.config import ConfigError
from producer.cli.app import config_app, words_app
from producer.cli.console import err, fail
from producer.cli.options import NglOpt
from producer.terminal import visible
from producer.words.clean import WordSourceError


class ListFormat(StrEnum):
    lines = "lines"
    json = "json"


class GenerateMode(StrEnum):
    auto = "auto"
    completion = "completion"
    chat = "chat"


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write the list here instead of to standard output.")]
FormatOpt = Annotated[ListFormat, typer.Option("--format", "-f", help="One term per line, or a JSON array.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for a glossary URL.")]
QualifiersOpt = Annotated[bool, typer.Option("--keep-qualifiers",
                                             help='Keep qualifiers such as "(C)" in "coulomb (C)"; dropped by default.')]


def info(message: str) -> None:
    # plain text on stderr, unwrapped: stdout stays clean for the list itself
    err.print(message, highlight=False, markup=False, soft_wrap=True)


def emit(terms: list[str], out: Path | None, fmt: ListFormat) -> None:
    text = json.dumps(terms, ensure_ascii=False, indent=1) + "\n" if fmt is ListFormat.json else "".join(f"{t}\n" for t in terms)
    if out is None:
        typer.echo(visible(text) if sys.stdout.isatty() else text, nl=False)  # data for a pipe, safe for a terminal
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"{out}: cannot write ({exc.strerror or exc})")


@words_app.command("glossary")
def glossary(
    source: Annotated[str, typer.Argument(help="A glossary page: an http(s) URL, a saved HTML file, or - for stdin.",
                                          show_default=False)],
    out: OutOpt = None,
    fmt: FormatOpt = ListFormat.lines,
    keep_qualifiers: QualifiersOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Every term of a Wikipedia-style glossary page, linked or not, in page order, without duplicates.

    Example: producer words glossary https://en.wikipedia.org/wiki/Glossary_of_physics -o physics.txt
    """
    from producer.words.glossary import glossary_terms

    try:
        found = glossary_terms(source, timeout=timeout, keep_qualifiers=keep_qualifiers)
    except WordSourceError as exc:
        fail(str(exc))
    emit(found.terms, out, fmt)
    info(f"{len(found.terms)} terms from {source} ({found.markup} entries)")


@words_app.command("generate")
def generate(
    topic: Annotated[str, typer.Option("--topic", "-t", help='The subject, e.g. "physics".', show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=5000, help="How many terms to collect.")] = 50,
    model: Annotated[str, typer.Option("--model", "-m", help="A .gguf path, a bundled name or REPO:FILE.")] = "smollm2-135m",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Base seed; each round uses the next one.")] = 0,
    mode: Annotated[GenerateMode, typer.Option(
        "--mode", help="auto: ask (chat) to start, then continue the list (completion); or only one.")] = GenerateMode.auto,
    example: Annotated[list[str] | None, typer.Option(
        "--example", "-e", help='A term to start the list with, like the seed\'s "gravity", "force" (repeatable).')] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=8, help="Tokens per round.")] = 96,
    temperature: Annotated[float, typer.Option(min=0.0, max=5.0)] = 0.7,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many rounds in a row without a new term.")] = 3,
    max_rounds: Annotated[int | None, typer.Option("--max-rounds", min=1, help="Hard limit on rounds.")] = None,
    n_gpu_layers: NglOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: all).")] = None,
    out: OutOpt = None,
    fmt: FormatOpt = ListFormat.lines,
) -> None:
    """Ask the model for terms on a topic, cleaned and de-duplicated; runs here, no Redis needed.

    Small models drift: check the list (or prefer a glossary page) before building a config from it.
    """
    from convfarm.engine import ResidentModel
    from convfarm.model_files import ModelNotFound
    from producer.words.generate import RoundReport, generate_terms

    if not topic.strip():
        fail("--topic is blank")
    started = time.perf_counter()
    try:
        resident = ResidentModel(model, n_ctx=2048, n_gpu_layers=n_gpu_layers or 0, n_threads=threads)
    except ModelNotFound as exc:
        fail(str(exc))
    except ValueError as exc:  # llama.cpp could not load the file
        fail(f"model {model!r}: cannot load ({exc})")

    def report(r: RoundReport) -> None:
        info(f"round {r.number} ({r.style}, {r.seconds:.1f}s): +{len(r.new_terms)} -> {r.total}/{count}")

    try:
        result = generate_terms(resident.llama, topic, count, mode=mode.value, seed=seed, examples=example or [],
                                max_tokens=max_tokens, temperature=temperature, patience=patience,
                                max_rounds=max_rounds, on_round=report)
    finally:
        resident.close()
    seconds = time.perf_counter() - started
    if not result.terms:
        fail(f"the model gave no usable terms for {topic!r} in {result.rounds} rounds; "
             "try --example TERM, another --seed or a larger --model", code=1)
    emit(result.terms, out, fmt)
    how = "" if result.complete else f" (stopped: {result.stopped} after {result.rounds} rounds)"
    info(f"got {len(result.terms)} of {count} terms for {result.topic!r} in {result.rounds} rounds, "
              f"{seconds:.1f}s{how}")


@config_app.command("new")
def config_new(
    name: Annotated[str, typer.Argument(help="The run's name (letters, digits, '.', '_', '-').", show_default=False)],
    topic: Annotated[str, typer.Option("--topic", "-t", help='Put into the prompt: "a physics teacher".',
                                       show_default=False)],
    words: Annotated[Path | None, typer.Option("--words", "-w", help="Word file: one per line, or a JSON array.")] = None,
    glossary: Annotated[str | None, typer.Option("--glossary", "-g", help="Words from a glossary URL or HTML file.")] = None,
    template: Annotated[Path | None, typer.Option("--from", help="Template config (default: the seed's example).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Replace the template's model.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Config file to write (default: NAME.json).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    keep_qualifiers: QualifiersOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Write a config for a topic: the template's prompt with the topic put in, the words, the template's excludes.

    Example: producer config new physics --topic physics --glossary https://en.wikipedia.org/wiki/Glossary_of_physics
    """
    from producer.config_new import build_config, load_template, write_config
    from producer.words.clean import read_word_file

    if (words is None) == (glossary is None):
        fail("give exactly one of --words FILE or --glossary SOURCE")
    target = out or Path(f"{name}.json")
    # cheap checks first: no page is fetched for a config that could not be written anyway
    if target.exists() and not force:
        fail(f"{target} already exists; use --force to replace it")
    try:
        base = load_template(template)
        build_config(name, topic, ["placeholder"], base, model=model, source=str(target))
        if words is not None:
            word_list, origin = read_word_file(words), str(words)
        else:
            from producer.words.glossary import glossary_terms

            word_list, origin = glossary_terms(glossary or "", timeout=timeout, keep_qualifiers=keep_qualifiers).terms, glossary
        new = build_config(name, topic, word_list, base, model=model, source=str(target))
    except (ConfigError, WordSourceError) as exc:
        fail(str(exc))
    for warning in new.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    try:
        write_config(new, target, force=force)
    except (FileExistsError, IsADirectoryError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{target}: cannot write ({exc.strerror or exc})")
    info(f"wrote {target}: {len(new.config.words)} words from {origin}")
    info(f"prompt: {new.config.prompt_for(new.config.words[0])}")
    info(f"next: producer try {target} --word {shlex.quote(new.config.words[0])}   then: producer run {target}")
