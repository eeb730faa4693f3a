"""Plot plumbing shared by report.png, search.png and the LM report: labels kept apart, plain log ticks, atomic save."""

from __future__ import annotations

from pathlib import Path

from compress._io import atomic_path


def figure():
    """A 9 x 5.5 inch figure on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, 5.5), dpi=120)


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


def plain_log_ticks(ax, labelsize: float = 8) -> None:
    """Log-scale x ticks written as plain numbers (30, 40, 60), not powers of ten."""
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="both", labelsize=labelsize)


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
