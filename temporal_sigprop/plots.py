"""The report's figures (matplotlib, Agg backend: no display needed).

Every figure gives each method the same colour everywhere (its place in the method registry), so
a reader can follow one method across learning curves, anytime curves, alignment and scaling.
Points that could not be measured (out of memory, too slow, n/a) are drawn as hollow markers
along the top edge of the panel at their x position — marked, never dropped.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402
from .registry import METHOD_NAMES  # noqa: E402

#: marker for a point that was not measured, by status
FAILED_MARKERS = {"too slow": "X", "oom": "s", "n/a": "o", "error": "D"}
FAILED_LABELS = {"too slow": "too slow", "oom": "out of memory", "n/a": "n/a", "error": "error"}


#: fixed colours: the BPTT family in blues, forward-mode methods in greens/browns/purples, sigprop
#: in red; a method registered later gets a grey-ish colour of its own.
COLORS = {"bptt": "#1f77b4", "tbptt": "#17becf", "rtrl": "#2ca02c", "snap1": "#bcbd22",
          "eprop": "#9467bd", "fwdgrad": "#8c564b", "sigprop": "#d62728"}
_EXTRA = ("#7f7f7f", "#e377c2", "#ff7f0e", "#393b79", "#637939", "#843c39")


def method_color(method: str):
    """One colour per method, stable across figures and runs."""
    if method in COLORS:
        return COLORS[method]
    names = [m for m in METHOD_NAMES if m not in COLORS]
    index = names.index(method) if method in names else sum(map(ord, method))
    return _EXTRA[index % len(_EXTRA)]


def save(fig, path: Path) -> None:
    """PNG, written atomically; the figure is closed. (No bbox_inches='tight': it draws the
    figure twice, and drawing is most of the report's time; layouts are set per figure.)"""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _short_number(v: float) -> str:
    """16, 0.5, 100k, 2M, 1G: tick labels a reader takes in at a glance."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:g}"


def _plain_log_axis(axis, span_decades: float | None = None) -> None:
    """Log axis labelled 0.5, 2, 100k … rather than 5×10^-1 or 1e+05; no minor labels. A short
    axis (under two decades) gets ticks at 1, 2 and 5 of each decade so it has more than one."""
    if span_decades is not None and span_decades < 2:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _short_number(v)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _title(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _mean_std(series: list[list[float]]) -> tuple[list[float], list[float]]:
    """Mean and std across seeds of equally indexed sequences (ragged: shortest length)."""
    n = min(len(s) for s in series)
    means, stds = [], []
    for i in range(n):
        values = [s[i] for s in series if s[i] is not None]
        if not values:
            means.append(math.nan)
            stds.append(0.0)
            continue
        m = sum(values) / len(values)
        v = sum((x - m) ** 2 for x in values) / (len(values) - 1) if len(values) > 1 else 0.0
        means.append(m)
        stds.append(math.sqrt(v))
    return means, stds


def _band(ax, x, mean, std, method, label):
    color = method_color(method)
    ax.plot(x, [100 * m for m in mean], color=color, label=label, marker="." if len(x) < 30 else None)
    if any(s > 0 for s in std):
        ax.fill_between(x, [100 * (m - s) for m, s in zip(mean, std)],
                        [100 * (m + s) for m, s in zip(mean, std)], color=color, alpha=0.15,
                        linewidth=0)


def learning_curves(cells: list[dict], title: str, path: Path) -> bool:
    """Validation accuracy against epoch and against training time; mean ± std over seeds.

    ``cells``: the result cells of one task × model (each with ``curves``: per seed, a list of
    ``{epoch, val_accuracy, train_seconds}``). Returns False (and writes nothing) if no curves.
    """
    cells = [c for c in cells if any(c.get("curves") or [])]  # seeds with no epoch logged: none
    if not cells:
        return False
    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True,
                                     layout="constrained")
    for cell in cells:
        curves = [c for c in cell["curves"] if c]
        epochs = [p["epoch"] for p in curves[0]]
        mean, std = _mean_std([[p["val_accuracy"] for p in c] for c in curves])
        label = cell["method"]
        _band(ax_e, epochs[:len(mean)], mean, std, cell["method"], label)
        times, _ = _mean_std([[p["train_seconds"] for p in c] for c in curves])
        _band(ax_t, times[:len(mean)], mean, std, cell["method"], label)
    ax_e.set_xlabel("epoch")
    ax_e.set_ylabel("validation accuracy (%)")
    ax_e.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax_t.set_xlabel("training time (s, timed batches only, mean over seeds)")
    for ax in (ax_e, ax_t):
        ax.grid(alpha=0.3)
    ax_e.legend(fontsize=8, loc="best")
    fig.suptitle(_title(title, 110), fontsize=10)
    save(fig, path)
    return True


def anytime_curves(cells: list[dict], title: str, path: Path) -> bool:
    """Test accuracy of the prediction made at each step (mean over seeds)."""
    cells = [c for c in cells if any(c.get("anytime") or [])]
    if not cells:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    for cell in cells:
        mean, std = _mean_std(cell["anytime"])
        _band(ax, list(range(1, len(mean) + 1)), mean, std, cell["method"], cell["method"])
    ax.set_xlabel("time step (prediction made after reading this many steps)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_title(title, 75), fontsize=10)
    save(fig, path)
    return True


def alignment_curves(cells: list[dict], title: str, path: Path, *,
                     expected: dict[str, float] | None = None, note: str = "") -> bool:
    """Cosine between each method's update direction and the exact BPTT gradient, over training.

    ``expected``: per method, the cosine its estimator is expected to have (fwdgrad's ≈ √(K/P)),
    drawn as a dashed line in the method's colour; ``note``: a line of text under the axes
    (what a cosine near 0 means for a method that is not a gradient estimator).
    """
    cells = [c for c in cells if any(p.get("cosine") is not None for p in c.get("alignment") or [])]
    if not cells:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.3 if note else 3.8), layout="constrained")
    for method, value in (expected or {}).items():
        ax.axhline(value, color=method_color(method), linestyle="--", linewidth=1,
                   label=f"{method} expected ≈ {value:.3f}")
    for cell in cells:
        points = [p for p in cell["alignment"] if p.get("cosine") is not None]
        x = [p["epoch"] for p in points]
        y = [p["cosine"] for p in points]
        err = [p.get("cosine_std") or 0.0 for p in points]
        ax.errorbar(x, y, yerr=err, color=method_color(cell["method"]), marker="o", capsize=3,
                    label=cell["method"])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel("cosine with BPTT gradient")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_title(title, 75), fontsize=10)
    if note:
        fig.supxlabel(_title(note, 110), fontsize=8, color="#444")
    save(fig, path)
    return True


SCALING_METRICS = (
    ("training_memory_bytes", "training memory (MiB)", 1 / 2**20),
    ("time_per_step_ms", "time per step (ms)", 1.0),
    ("flops_per_step", "FLOPs per step", 1.0),
)


def scaling(rows: list[dict], sweep: str, title: str, path: Path) -> bool:
    """Log–log panels of memory, time and FLOPs against sequence length or hidden size.

    ``rows``: bench rows of one sweep (``length`` → x = steps, ``hidden`` → x = hidden).
    """
    rows = [r for r in rows if r.get("sweep") == sweep]
    if not rows:
        return False
    xkey = "steps" if sweep == "length" else "hidden"
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(SCALING_METRICS), figsize=(13, 4.2), layout="constrained")
    statuses_seen = set()
    for ax, (key, label, scale) in zip(axes, SCALING_METRICS):
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[xkey])
            ok = [r for r in mine if r["status"] == "ok" and r.get(key) not in (None, "")]
            color = method_color(method)
            if ok:
                ax.plot([r[xkey] for r in ok], [float(r[key]) * scale for r in ok], marker="o",
                        markersize=4, color=color)
            for r in mine:
                if r["status"] != "ok":
                    status = r["status"]
                    statuses_seen.add(status)
                    ax.plot([r[xkey]], [0.97], transform=top, linestyle="none", clip_on=False,
                            marker=FAILED_MARKERS.get(status, "D"), markersize=8,
                            markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.margins(x=0.06, y=0.15)  # keep measured points clear of the top-edge markers
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        low, high = ax.get_ylim()
        _plain_log_axis(ax.yaxis, math.log10(high / low) if low > 0 and high > low else None)
        ax.set_xlabel("sequence length T" if sweep == "length" else "hidden size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="major")
    # one legend for the figure: every method (even one with no measured point) and each kind of
    # unmeasured point
    handles = [Line2D([], [], color=method_color(m), marker="o", markersize=4) for m in methods]
    labels = list(methods)
    for status in sorted(statuses_seen):
        handles.append(Line2D([], [], linestyle="none", marker=FAILED_MARKERS.get(status, "D"),
                              markerfacecolor="none", markeredgecolor="black"))
        labels.append(f"{FAILED_LABELS.get(status, status)} (top edge)")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 9), fontsize=8)
    fig.suptitle(_title(title, 140), fontsize=10)
    save(fig, path)
    return True
