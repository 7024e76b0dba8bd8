"""The card's plots: PNG files under ``RUN_DIR/plots/``, drawn headless with matplotlib.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI
backend, nothing to configure) and each is written like every other file of a run directory:
to a temporary file, fsync'd, renamed (``convfarm.rundir.files.atomic_path``). matplotlib is
the ``card`` extra; :class:`PlotsUnavailable` says how to install it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from convfarm.rundir.files import atomic_path
from producer.dataset.summary import RunSummary

PLOTS_DIR = "plots"
MAX_WORKERS = 10  # lines in the over-time plot; the rest are drawn as one "other workers" line
EXTRA_HINT = "pip install 'convfarm[card]'"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed (the ``card`` extra)."""


@dataclass(frozen=True)
class Plot:
    file: str  # relative to the run directory, as the card links it
    title: str


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(f"the card's plots need matplotlib, which is not installed: {EXTRA_HINT} "
                               "(or --no-plots for a card without them)") from None
    return Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")


def _label(text: str) -> str:
    # a worker name is data, not mathtext: "$" would start a formula
    return text.replace("$", r"\$")


def _turns(summary: RunSummary, ax: Any) -> None:
    counts = Counter(summary.turns)
    xs = sorted(counts)
    ax.bar(xs, [counts[x] for x in xs], color="tab:blue")
    ax.set_xlabel("turns")
    ax.set_ylabel("accepted conversations")
    ax.set_xticks(xs)


def _tokens(summary: RunSummary, ax: Any) -> None:
    data = [summary.completion_tokens[k] for k in ("accepted", "rejected")]
    present = [(d, k, c) for d, k, c in zip(data, ("accepted", "rejected"), ("tab:green", "tab:orange"), strict=True) if d]
    ax.hist([d for d, _, _ in present], bins=30, stacked=True, label=[k for _, k, _ in present],
            color=[c for _, _, c in present])
    ax.set_xlabel("completion tokens per attempt")
    ax.set_ylabel("attempts")
    ax.legend()


def _outcomes(summary: RunSummary, ax: Any) -> None:
    by_reason = summary.counts.get("by_reason") or {}
    labels = ["accepted", *(f"rejected: {r}" for r in by_reason)]
    values = [summary.accepted, *by_reason.values()]
    if dropped := summary.counts.get("dropped"):
        labels.append("dropped")
        values.append(dropped)
    colors = ["tab:green"] + ["tab:orange"] * len(by_reason) + ["tab:gray"] * (len(labels) - 1 - len(by_reason))
    ax.barh([_label(x) for x in labels][::-1], values[::-1], color=colors[::-1])
    ax.set_xlabel("attempts")


def _over_time(summary: RunSummary, ax: Any) -> None:
    start = min(min(times) for times in summary.accepted_at.values())
    ranked = sorted(summary.accepted_at.items(), key=lambda item: -len(item[1]))
    shown = ranked[:MAX_WORKERS]
    if len(ranked) > MAX_WORKERS:
        shown.append((f"{len(ranked) - MAX_WORKERS} other workers", [t for _, ts in ranked[MAX_WORKERS:] for t in ts]))
    for worker, times in shown:
        minutes = sorted((t - start).total_seconds() / 60 for t in times)
        ax.step([0.0, *minutes], range(len(minutes) + 1), where="post", label=_label(worker))
    ax.set_xlabel("minutes since the first accepted conversation")
    ax.set_ylabel("accepted conversations")
    ax.legend(fontsize="small")


def _relevance(summary: RunSummary, ax: Any) -> None:
    present = [(summary.relevance[k], k, c) for k, c in (("accepted", "tab:green"), ("rejected", "tab:orange"))
               if summary.relevance[k]]
    ax.hist([d for d, _, _ in present], bins=20, range=(0.0, 1.0), stacked=True, label=[k for _, k, _ in present],
            color=[c for _, _, c in present])
    if summary.min_relevance is not None:
        ax.axvline(summary.min_relevance, color="black", linestyle="--", label=f"min_relevance {summary.min_relevance}")
    ax.set_xlabel("relevance score")
    ax.set_ylabel("records")
    ax.legend()


# (file, title, drawer, drawn when): the card shows them in this order
PLOTS: tuple[tuple[str, str, Callable[[RunSummary, Any], None], Callable[[RunSummary], bool]], ...] = (
    ("turns.png", "Turns per accepted conversation", _turns, lambda s: bool(s.turns)),
    ("completion_tokens.png", "Completion tokens per attempt", _tokens,
     lambda s: bool(s.completion_tokens["accepted"] or s.completion_tokens["rejected"])),
    ("outcomes.png", "Outcomes by reason", _outcomes, lambda s: s.accepted + s.rejected > 0),
    ("accepted_over_time.png", "Accepted conversations over time, per worker", _over_time, lambda s: bool(s.accepted_at)),
    ("relevance.png", "Relevance score (judge)", _relevance, lambda s: s.has_scores),
)


def write_plots(summary: RunSummary) -> list[Plot]:
    """Draw every plot the run has data for into ``RUN_DIR/plots/``; returns them in card order."""
    written: list[Plot] = []
    require_plots()
    from matplotlib.ticker import MaxNLocator

    directory = summary.run_dir / PLOTS_DIR
    for name, title, draw, wanted in PLOTS:
        if not wanted(summary):
            continue
        figure = _figure()
        ax = figure.add_subplot()
        draw(summary, ax)
        # the count axis takes whole numbers: no 0.5 ticks on small runs
        count_axis = ax.xaxis if name == "outcomes.png" else ax.yaxis
        if isinstance(locator := count_axis.get_major_locator(), MaxNLocator):
            locator.set_params(integer=True)
        ax.set_title(title)
        with atomic_path(directory / name) as tmp:
            # no timestamp in the file: the same run draws the same bytes
            figure.savefig(tmp, format="png", metadata={"Software": None})
        written.append(Plot(f"{PLOTS_DIR}/{name}", title))
    for name, *_ in PLOTS:  # a plot an earlier card drew that this run no longer has data for
        if not any(p.file.endswith("/" + name) for p in written):
            (directory / name).unlink(missing_ok=True)
    return written


def require_plots() -> None:
    """Raise :class:`PlotsUnavailable` before any work when matplotlib is missing."""
    _figure()
