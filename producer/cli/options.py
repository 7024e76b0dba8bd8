"""Arguments and options that several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="The run config (JSON), see README 'Config reference'.",
                                           show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory (OUT/<run>/ with shards and manifest.json).",
                                           show_default=False)]
RunArg = Annotated[str | None, typer.Argument(
    metavar="RUN", help="Run id, a unique prefix of one (e.g. the config name) or the config file (default: the "
                        "newest run); see `producer runs`.", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask which run is meant (a run named by a prefix, "
                                      "a config file or not at all is confirmed first).")]
OutRootOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output root; the run writes to OUT/<run>/.")]
PerWordOpt = Annotated[int | None, typer.Option("--per-word", min=1, help="Accepted conversations wanted per word.")]
ForeverOpt = Annotated[bool, typer.Option("--forever", help="Keep topping up: when every word has its quota, raise it by "
                                          "per_word and go on, until `producer cancel RUN` (the seed's run.sh).")]
NglOpt = Annotated[int | None, typer.Option("--n-gpu-layers", "-ngl", min=-1,
                                            help="Layers to offload to the GPU (-1 = all), like llama.cpp's -ngl.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Forget the run's state in Redis first (a finished or cancelled "
                                        "run, e.g. after its output directory was deleted) and start it again.")]
