"""Arguments and options that several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="The run config (JSON), see README 'Config reference'.",
                                           show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory (OUT/<run>/ with shards and manifest.json).",
                                           show_default=False)]
RunArg = Annotated[str, typer.Argument(help="Run id (or a unique prefix of one, e.g. the config name); see `producer runs`.",
                                       show_default=False)]
OutRootOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output root; the run writes to OUT/<run>/.")]
PerWordOpt = Annotated[int | None, typer.Option("--per-word", min=1, help="Accepted conversations wanted per word.")]
ForeverOpt = Annotated[bool, typer.Option("--forever", help="Keep topping up: when every word has its quota, raise it by "
                                          "per_word and go on, until `producer cancel RUN` (the seed's run.sh).")]
NglOpt = Annotated[int | None, typer.Option("--n-gpu-layers", "-ngl", min=-1,
                                            help="Layers to offload to the GPU (-1 = all), like llama.cpp's -ngl.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Forget the run's state in Redis first (a finished or cancelled "
                                        "run, e.g. after its output directory was deleted) and start it again.")]
