"""The result of :func:`~oodscope.bench.evaluate`: a metric table plus the scores behind it.

A :class:`Report` renders as markdown (its ``str`` and ``repr``), CSV, JSON, a pandas DataFrame, or one
self-contained HTML file with the table and, per detector, score histograms and ROC curves.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._table import markdown_table
from ..detectors.base import Detector
from ..metrics import auroc, roc_curve
from ._common import higher_is_better

__all__ = ["DEFAULT_METRICS", "BestDetector", "Report"]

#: AUROC, FPR@95TPR in both conventions, AUPR-In and AUPR-Out.
DEFAULT_METRICS = ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out")

_DESCRIPTIONS = {
    "auroc": "area under the ROC curve (exact, ties count 1/2)",
    "fpr95tpr_ood": "FPR at 95% TPR with OOD positive: share of ID samples flagged OOD when 95% of OOD "
    "samples are caught",
    "fpr95tpr_id": "FPR at 95% TPR with ID positive: share of OOD samples accepted as ID when 95% of ID "
    "samples are kept",
    "fpr95tpr": "FPR at 95% TPR with OOD positive",
    "aupr_in": "average precision with ID positive",
    "aupr_out": "average precision with OOD positive",
    "detect_acc": "best balanced detection accuracy",
}


def mean_label(group: str) -> str:
    """The ``ood`` entry of the row averaging a group of OOD sets; ``"all"`` is the overall mean.

    >>> mean_label("near")
    'near (mean)'
    """
    return f"{group} (mean)"


class BestDetector(NamedTuple):
    """What :meth:`Report.best` returns: ``name, value, detector = report.best()``."""

    name: str
    value: float
    detector: Detector


@dataclasses.dataclass(eq=False, repr=False)
class Report:
    """Metrics of several detectors on several OOD sets, with the raw scores and timings.

    Built by :func:`~oodscope.bench.evaluate`. Scores read higher = more OOD.

    Attributes
    ----------
    rows : list of dict
        One row per detector and OOD set, ``{"detector", "ood", <metric>: value, ...}``, followed for each
        detector by one row per group mean (``ood`` is ``"<group> (mean)"``) and, with several OOD sets, the
        overall mean (``"all (mean)"``). A mean is None when a member's value is missing.
    metrics : tuple of str
        The metric names, in column order (see :func:`~oodscope.bench_metrics`).
    ood_names : list of str
        The OOD sets, in the order given.
    groups : dict of str to list of str
        The groups of OOD sets that were averaged.
    id_accuracy : float or None
        The model's top-1 accuracy on the ID data (argmax of the logits against its labels); None without
        labels.
    n_samples : dict of str to int or None
        Sample counts of ``"fit"`` (None when no fit pass was needed), ``"id"`` and each OOD set.
    id_scores : dict of str to ndarray
        Per detector, its scores of the ID data.
    ood_scores : dict of str to dict of str to ndarray
        Per detector and OOD set, its scores.
    detectors : dict of str to Detector
        The fitted detectors that did not fail to fit (clones of those given).
    errors : list of dict
        Failures: ``{"detector", "stage", "dataset", "error"}``; the stage is ``"extract"`` (a layer the
        model lacks), ``"fit"``, ``"score"`` or ``"metrics"`` (e.g. non-finite scores).
    timings : dict
        Seconds spent: ``{"extract": {dataset: s}, "fit": {detector: s}, "score": {detector: s},
        "total": s}``; a detector's score time includes its own passes when it needs input gradients.
    """

    rows: list[dict[str, Any]]
    metrics: tuple[str, ...]
    ood_names: list[str]
    groups: dict[str, list[str]]
    id_accuracy: float | None
    n_samples: dict[str, int | None]
    id_scores: dict[str, np.ndarray]
    ood_scores: dict[str, dict[str, np.ndarray]]
    detectors: dict[str, Detector]
    errors: list[dict[str, Any]]
    timings: dict[str, Any]

    # --- access ---------------------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """The table's columns: ``detector``, ``ood`` and the metrics."""
        return ["detector", "ood", *self.metrics]

    def _ood_label(self, ood: str | None) -> str:
        if ood is None:
            return mean_label("all") if len(self.ood_names) > 1 else self.ood_names[0]
        if ood in self.ood_names:
            return ood
        if ood in self.groups or ood == "all":
            return mean_label(ood)
        labels = {row["ood"] for row in self.rows}
        if ood in labels:
            return ood
        raise KeyError(f"No OOD set or group {ood!r}; the report has {sorted(labels)}.")

    def value(self, detector: str, ood: str | None = None, metric: str = "auroc") -> float | None:
        """One cell of the table: ``detector`` on an OOD set or group (default: the overall mean)."""
        label = self._ood_label(ood)
        for row in self.rows:
            if row["detector"] == detector and row["ood"] == label:
                return row[metric]
        raise KeyError(f"The report has no row for detector {detector!r} on {label!r}.")

    def score_pair(self, detector: str, ood: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores_in, scores_out)`` of one detector and OOD set, e.g. for plots or thresholds."""
        return self.id_scores[detector], self.ood_scores[detector][ood]

    def best(self, metric: str = "auroc", ood: str | None = None) -> BestDetector:
        """The detector with the best ``metric`` on an OOD set or group (default: the overall mean).

        Higher is better for AUROC, AUPR, TNR and detection accuracy, lower for FPR. Ties go to the
        detector listed first.
        """
        if metric not in self.metrics:
            raise ValueError(f"The report has no metric {metric!r}; it has {list(self.metrics)}.")
        label = self._ood_label(ood)
        sign = 1.0 if higher_is_better(metric) else -1.0
        candidates = [row for row in self.rows if row["ood"] == label and row[metric] is not None]
        if not candidates:
            raise ValueError(f"No detector has a {metric} value on {label!r}.")
        row = max(candidates, key=lambda row: sign * row[metric])
        return BestDetector(row["detector"], row[metric], self.detectors[row["detector"]])

    # --- text formats ---------------------------------------------------------------------------------------

    def to_markdown(self, digits: int = 4) -> str:
        """The metric table as markdown, followed by the ID accuracy, the metric conventions and failures."""
        lines = [markdown_table(self.rows, self.columns, digits=digits) if self.rows else "(no results)", ""]
        if self.id_accuracy is not None:
            lines.append(f"Model accuracy on the ID data: {self.id_accuracy:.{digits}f}.")
        lines += [
            f"- {metric}: {_DESCRIPTIONS[metric]}" for metric in self.metrics if metric in _DESCRIPTIONS
        ]
        for error in self.errors:
            where = error["stage"] + (f" on {error['dataset']!r}" if error["dataset"] else "")
            lines.append(f"- FAILED {error['detector']} ({where}): {error['error']}")
        return "\n".join(lines).rstrip()

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        """The summary and the full table, for notebooks (no figures; see :meth:`to_html`)."""
        return self._pivot_html(self.metrics[0]) + self._table_html()

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the metric table (header ``detector,ood,<metrics>``; empty cells for missing values)."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        """Everything as plain Python objects (the fitted detectors by their ``repr``)."""
        result: dict[str, Any] = {
            "metrics": list(self.metrics),
            "ood_names": list(self.ood_names),
            "groups": {group: list(members) for group, members in self.groups.items()},
            "id_accuracy": self.id_accuracy,
            "n_samples": dict(self.n_samples),
            "rows": [dict(row) for row in self.rows],
            "detectors": {name: repr(detector) for name, detector in self.detectors.items()},
            "errors": [dict(error) for error in self.errors],
            "timings": self.timings,
        }
        if include_scores:
            result["scores"] = {
                name: {"id": scores.tolist()}
                | {ood: values.tolist() for ood, values in self.ood_scores.get(name, {}).items()}
                for name, scores in self.id_scores.items()
            }
        return result

    def to_json(self, path: str | os.PathLike[str] | None = None, include_scores: bool = False) -> str:
        """The report as JSON (see :meth:`to_dict`), written to ``path`` when given; returns the text."""
        text = json.dumps(self.to_dict(include_scores), indent=2)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_dataframe(self) -> Any:
        """The metric table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "Report.to_dataframe needs pandas, an optional dependency. Install it with: "
                "pip install 'oodscope[pandas]' (or pip install pandas)."
            ) from error
        return pd.DataFrame(self.rows, columns=self.columns)

    # --- HTML -----------------------------------------------------------------------------------------------

    def to_html(
        self,
        path: str | os.PathLike[str],
        title: str = "oodscope report",
        figures: bool = True,
        bins: int = 50,
    ) -> Path:
        """Write one self-contained HTML file: the table, and per detector its histograms and ROC curves.

        Styles are inline and the figures are embedded as base64 PNG, so the file needs nothing else (no
        network, no JavaScript). Figures need matplotlib (``pip install 'oodscope[plots]'``); with
        ``figures=False`` only the tables are written.
        """
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{_escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{_escape(title)}</h1>",
            f'<p class="meta">{self._summary_html()}</p>',
        ]
        if self.errors:
            parts += ["<h2>Failures</h2>", self._errors_html()]
        parts += [
            f"<h2>Summary: {_escape(self.metrics[0])}</h2>",
            self._pivot_html(self.metrics[0]),
            '<p class="note">Scores read higher = more OOD. In each OOD set or mean, the best value of each '
            "metric is in bold (unless all detectors tie); means are over the OOD sets of a group.</p>",
            "<h2>All metrics</h2>",
            '<ul class="legend">'
            + "".join(
                f"<li><b>{_escape(metric)}</b>: {_escape(_DESCRIPTIONS[metric])}</li>"
                for metric in self.metrics
                if metric in _DESCRIPTIONS
            )
            + "</ul>",
            self._table_html(),
        ]
        if figures and self.id_scores:
            parts.append("<h2>Scores and ROC curves</h2>")
            for name in self.id_scores:
                png = _detector_png(self.id_scores[name], self.ood_scores.get(name, {}), bins)
                parts += [
                    '<section class="detector">',
                    f"<h3>{_escape(name)}</h3>",
                    f'<img alt="Score histograms and ROC curves of {_escape(name)}" '
                    f'src="data:image/png;base64,{png}">',
                    "</section>",
                ]
        parts += ["<h2>Timings</h2>", self._timings_html(), "</body>", "</html>"]
        path = Path(path)
        path.write_text("\n".join(parts) + "\n", encoding="utf-8")
        return path

    def _summary_html(self) -> str:
        counts = ", ".join(
            f"{_escape(name)}: {count}" for name, count in self.n_samples.items() if count is not None
        )
        accuracy = (
            ""
            if self.id_accuracy is None
            else f"Model accuracy on the ID data: <b>{self.id_accuracy:.4f}</b>. "
        )
        groups = "; ".join(f"{_escape(g)} = {', '.join(map(_escape, m))}" for g, m in self.groups.items())
        return (
            f"{accuracy}Samples ({counts}). {self._detector_count()}, "
            f"{len(self.ood_names)} OOD set(s)" + (f"; groups: {groups}" if groups else "") + "."
        )

    def _best_cells(self) -> dict[tuple[str, str], float]:
        """Per (ood label, metric), the best signed value, only where the detectors do not all tie."""
        values: dict[tuple[str, str], list[float]] = {}
        for metric in self.metrics:
            sign = 1.0 if higher_is_better(metric) else -1.0
            for row in self.rows:
                if row[metric] is not None:
                    values.setdefault((row["ood"], metric), []).append(sign * row[metric])
        return {key: max(signed) for key, signed in values.items() if len(set(signed)) > 1}

    def pivot(self, metric: str = "auroc") -> list[dict[str, Any]]:
        """One row per detector, one column per OOD set and mean: ``{"detector", <ood>: value, ...}``."""
        if metric not in self.metrics:
            raise ValueError(f"The report has no metric {metric!r}; it has {list(self.metrics)}.")
        table: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            table.setdefault(row["detector"], {"detector": row["detector"]})[row["ood"]] = row[metric]
        return list(table.values())

    def _pivot_html(self, metric: str) -> str:
        best = self._best_cells()
        rows = self.pivot(metric)
        labels = list(dict.fromkeys(row["ood"] for row in self.rows))
        sign = 1.0 if higher_is_better(metric) else -1.0
        head = '<th class="name">detector</th>' + "".join(
            f'<th class="{"mean" if label not in self.ood_names else ""}">{_escape(label)}</th>'
            for label in labels
        )
        body = []
        for row in rows:
            cells = [f'<td class="name detector">{_escape(row["detector"])}</td>']
            for label in labels:
                value = row.get(label)
                classes = [] if label in self.ood_names else ["mean"]
                if value is None:
                    cells.append('<td class="missing">&ndash;</td>')
                    continue
                if best.get((label, metric)) == sign * value:
                    classes.append("best")
                cells.append(f'<td class="{" ".join(classes)}">{value:.4f}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f'<table class="pivot"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def _detector_count(self) -> str:
        names = set(self.id_scores) | {error["detector"] for error in self.errors}
        failed = len(names - set(self.id_scores))
        return f"{len(names)} detector(s)" + (f" ({failed} failed)" if failed else "")

    def _table_html(self) -> str:
        best = self._best_cells()
        head = "".join(
            f'<th class="name">{_escape(c)}</th>' if c in ("detector", "ood") else f"<th>{_escape(c)}</th>"
            for c in self.columns
        )
        body = []
        spans: dict[str, int] = {}
        for row in self.rows:
            spans[row["detector"]] = spans.get(row["detector"], 0) + 1
        shown: set[str] = set()
        for row in self.rows:
            name = row["detector"]
            classes = ["mean"] if row["ood"] not in self.ood_names else []
            cells = []
            if name not in shown:
                shown.add(name)
                classes.append("first")
                cells.append(f'<td class="name detector" rowspan="{spans[name]}">{_escape(name)}</td>')
            cells.append(f'<td class="name">{_escape(row["ood"])}</td>')
            for metric in self.metrics:
                value = row[metric]
                if value is None:
                    cells.append('<td class="missing">&ndash;</td>')
                    continue
                sign = 1.0 if higher_is_better(metric) else -1.0
                is_best = best.get((row["ood"], metric)) == sign * value
                cells.append(f'<td class="best">{value:.4f}</td>' if is_best else f"<td>{value:.4f}</td>")
            body.append(f'<tr class="{" ".join(classes)}">' + "".join(cells) + "</tr>")
        return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def _errors_html(self) -> str:
        rows = "".join(
            f"<tr><td>{_escape(e['detector'])}</td><td>{_escape(e['stage'])}</td>"
            f'<td>{_escape(e["dataset"] or "")}</td><td class="message">{_escape(e["error"])}</td></tr>'
            for e in self.errors
        )
        return (
            '<table class="errors"><thead><tr><th>detector</th><th>stage</th><th>dataset</th>'
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def _timings_html(self) -> str:
        passes = "".join(
            f'<tr><td class="name">{_escape(name)}</td><td>{seconds:.3f}</td></tr>'
            for name, seconds in self.timings.get("extract", {}).items()
        )
        fit, score = self.timings.get("fit", {}), self.timings.get("score", {})
        detectors = "".join(
            f'<tr><td class="name detector">{_escape(name)}</td><td>{fit.get(name, 0.0):.3f}</td>'
            f"<td>{score.get(name, 0.0):.3f}</td></tr>"
            for name in dict.fromkeys([*fit, *score])
        )
        total = self.timings.get("total")
        return (
            '<div class="timings">'
            '<table><thead><tr><th class="name">extraction pass</th><th>seconds</th></tr></thead>'
            f"<tbody>{passes}</tbody></table>"
            '<table><thead><tr><th class="name">detector</th><th>fit (s)</th><th>score (s)</th></tr></thead>'
            f"<tbody>{detectors}</tbody></table></div>"
            + ("" if total is None else f'<p class="note">Total: {total:.3f} s.</p>')
        )


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; max-width: 1400px; margin: 24px auto; padding: 0 20px;
       line-height: 1.45; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05em; margin: 18px 0 6px; font-family: ui-monospace, Menlo, Consolas, monospace; }
.meta { color: #57606a; margin: 0 0 8px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #d8dee4; text-align: right; white-space: nowrap;
         font-variant-numeric: tabular-nums; }
th { background: #f6f8fa; border-bottom: 2px solid #afb8c1; }
th.name, td.name { text-align: left; }
td.detector { font-family: ui-monospace, Menlo, Consolas, monospace; vertical-align: top;
              background: #fff; border-right: 1px solid #d8dee4; }
tr.first td { border-top: 2px solid #8c959f; }
tr.mean td { background: #f6f8fa; font-style: italic; }
tr.mean td.detector { background: #fff; font-style: normal; }
table.pivot td.mean, table.pivot th.mean { background: #f6f8fa; }
table.pivot td.detector { border-right: 1px solid #d8dee4; }
td.best { font-weight: 700; color: #116329; }
td.missing { color: #8c959f; }
table.errors td, table.errors th { text-align: left; white-space: normal; vertical-align: top; }
table.errors td.message { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
ul.legend { color: #57606a; font-size: 13px; margin: 0 0 6px; padding-left: 20px; }
p.note { color: #57606a; font-size: 13px; margin: 0; }
div.timings { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
section.detector { margin: 12px 0 20px; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #d8dee4; border-radius: 4px; }
"""


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Report.to_html draws its figures with matplotlib, an optional dependency. Install it with: "
            "pip install 'oodscope[plots]', or call to_html(..., figures=False)."
        ) from error
    return Figure, FigureCanvasAgg


def _detector_png(scores_in: np.ndarray, scores_out: Mapping[str, np.ndarray], bins: int) -> str:
    """Base64 PNG: one histogram panel per OOD set (ID vs that set) and one panel of ROC curves.

    The figure is drawn on its own Agg canvas, outside pyplot: no global state changes and nothing stays
    open once it is saved.
    """
    figure_class, canvas_class = _matplotlib()
    n_panels = len(scores_out) + 1
    n_cols = min(n_panels, 4)
    n_rows = math.ceil(n_panels / n_cols)
    figure = figure_class(figsize=(3.4 * n_cols, 2.8 * n_rows), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(1, len(scores_out) + 1)]
    for ax, (ood, values), color in zip(axes, scores_out.items(), colors, strict=False):
        edges = np.histogram_bin_edges(np.concatenate([scores_in, values]), bins=bins)
        ax.hist(scores_in, bins=edges, density=True, alpha=0.55, color="C0", label=f"ID (n={scores_in.size})")
        ax.hist(values, bins=edges, density=True, alpha=0.55, color=color, label=f"{ood} (n={values.size})")
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.set_xlabel("score (higher = more OOD)", fontsize=9)
        ax.set_ylabel("density", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.locator_params(axis="x", nbins=5)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom, so that the legend does not cover the bars
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    roc_ax = axes[len(scores_out)]
    for (ood, values), color in zip(scores_out.items(), colors, strict=True):
        fpr, tpr, _ = roc_curve(scores_in, values, positive="ood", drop_intermediate=True)
        roc_ax.plot(fpr, tpr, color=color, lw=1.5, label=f"{ood} ({auroc(scores_in, values):.3f})")
    roc_ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
    roc_ax.set(xlim=(0, 1), ylim=(0, 1.01))
    roc_ax.set_title("ROC, OOD positive (AUROC)", fontsize=10)
    roc_ax.set_xlabel("FPR: ID flagged OOD", fontsize=9)
    roc_ax.set_ylabel("TPR: OOD caught", fontsize=9)
    roc_ax.tick_params(labelsize=8)
    roc_ax.legend(fontsize=8, frameon=False, loc="lower right")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")
