"""Plot plumbing shared by report.png, search.png and the LM report: models coloured by role, labels kept apart, plain
log ticks, atomic save."""

from __future__ import annotations

from pathlib import Path

from compress._io import atomic_path

# by a model's role, in report.png (both tasks) and search.png's references
ROLE_COLORS = {"teacher": "#d62728", "scratch": "#7f7f7f", "assistant": "#ff7f0e", "stage": "#1f77b4", "final": "#2ca02c"}


def figure():
    """A 9 x 5.5 inch figure on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, 5.5), dpi=120)


def role_scatter(points: list[tuple[float, float, dict]]):
    """A figure with a marker per (x, y, model), coloured by role (with legend entries), its area the file's size (the
    final model's larger, outlined, on top); returns fig, ax and the area of a size, for more markers to that scale."""
    fig, ax = figure()
    biggest = max(m["size_bytes"] for _, _, m in points)
    area = lambda size: 40 + 1500 * size / biggest  # noqa: E731
    for x, y, m in points:
        final = m["role"] == "final"
        ax.scatter([x], [y], s=area(m["size_bytes"]) * (1.6 if final else 1), alpha=0.6, zorder=3 if final else 2,
                   c=ROLE_COLORS.get(m["role"], ROLE_COLORS["stage"]), edgecolors="black", linewidths=1.5 if final else 0.5)
    for role in dict.fromkeys(m["role"] for _, _, m in points):  # a legend entry per role shown, in order
        ax.scatter([], [], c=ROLE_COLORS.get(role, ROLE_COLORS["stage"]), alpha=0.6, label=role)
    return fig, ax, area


def finish(fig, ax, path: Path, labels: list[tuple[float, float, str, str]], *, width: float, step: float,
           offset: float = 9, fontsize: float = 8, legend: str = "best", **axes) -> None:
    """A log x axis ticked in plain numbers (30, 40, 60, not powers of ten), ``axes`` (xlabel, ylabel, title, xlim),
    ``labels`` kept apart (label_points), a grid and the legend at ``legend``, in ``fontsize``; saved to ``path``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    ax.set(xscale="log", **axes)
    label_points(ax, fig, labels, width=width, step=step, offset=offset, fontsize=fontsize)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="both", labelsize=fontsize)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc=legend, fontsize=fontsize, framealpha=0.7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def label_points(ax, fig, labels: list[tuple[float, float, str, str]], *, width: float, step: float,
                 offset: float, fontsize: float) -> None:
    """Annotate (x, y, text, colour) points, moving a label down by ``step`` pixels while it would overlap one
    already placed (``width`` x ``step`` pixels around its anchor); a moved label gets a thin leader line."""
    fig.canvas.draw()
    placed: list[tuple[float, float]] = []  # label anchors in display pixels
    for x, y, text, col in sorted(labels, key=lambda t: (-t[1], t[0])):
        px, py = ax.transData.transform((x, y))
        dy = 4
        while any(abs(px - qx) < width and abs(py + dy - qy) < step for qx, qy in placed):
            dy -= step
        placed.append((px, py + dy))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(offset, dy * 72 / fig.dpi), fontsize=fontsize,
                    color=col, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if dy != 4 else None)
