"""PNG of reader F1 against the kept share of context tokens, one panel per dataset.

Compression methods are lines over their rates (x = measured kept share, not the target);
no context, full context and the gold-only oracle are reference points, since they have no rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyco_rag.evaluation.qa_eval import METHOD_LABELS
from hyco_rag.results import atomic_output

_STYLE: dict[str, dict[str, Any]] = {
    "hyco": dict(color="tab:red", marker="o", linewidth=2.5),
    "hyco_multihop": dict(color="tab:orange", marker="o", linewidth=2.5, linestyle="--"),
    "random": dict(color="tab:gray", marker="x"),
    "embeddings_filter": dict(color="tab:blue", marker="s"),
    "sentence_selection": dict(color="tab:green", marker="^"),
    "llmlingua": dict(color="tab:purple", marker="D"),
}
_REFERENCE: dict[str, dict[str, Any]] = {
    "none": dict(color="black", marker="v"),
    "full": dict(color="black", marker="*"),
    "oracle": dict(color="goldenrod", marker="P"),
}


def plot_f1_vs_kept_share(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw the figure for ``rows`` (as :mod:`hyco_rag.evaluation.qa_eval` returns) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    if not datasets:
        raise ValueError("no rows to plot")
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        subset = [row for row in rows if row["dataset"] == dataset]
        for method, style in _STYLE.items():
            points = sorted((r["kept_share"], r["f1"]) for r in subset if r["method"] == method)
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, label=METHOD_LABELS[method], **style)
        for method, style in _REFERENCE.items():
            row = next((r for r in subset if r["method"] == method), None)
            if row is None:
                continue
            if row["kept_share"] > 0:
                axis.scatter([row["kept_share"]], [row["f1"]], s=90, zorder=5, label=METHOD_LABELS[method], **style)
                axis.axhline(row["f1"], color=style["color"], linestyle=":", linewidth=0.8)
            else:  # no context has no place on a log axis: a line only
                axis.axhline(row["f1"], color=style["color"], linestyle="--", linewidth=1.0, label=METHOD_LABELS[method])
        n = subset[0]["n"] if subset else 0
        axis.set_xscale("log")
        ticks = [0.05, 0.1, 0.125, 0.25, 0.5, 1.0]
        axis.set_xticks(ticks)
        axis.set_xticklabels(["1/20", "1/10", "1/8", "1/4", "1/2", "1"])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("kept share of context tokens (reader tokenizer, log scale)")
        axis.set_ylabel("reader F1")
        axis.set_title(f"{dataset} (n={n})")
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for axis in axes[0][1:]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    figure.tight_layout(rect=(0, 0.12 if len(labels) > 4 else 0.07, 1, 1))
    path = Path(path)
    try:
        with atomic_output(path, suffix=path.suffix or ".png") as temporary:
            figure.savefig(temporary, dpi=110)
    finally:
        plt.close(figure)
    return path
