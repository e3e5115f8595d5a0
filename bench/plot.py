"""The PNG: throughput against number of workers, median with min-max bars, one line per system.

matplotlib is imported here only, so the rest of the suite (and its unit tests) runs without it.
"""

from pathlib import Path

from .stats import Series


def plot_scaling(lines: dict[str, list[Series]], path: Path, title: str) -> str | None:
    """Write the plot; return None, or why it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (`make bench` installs it into the venv)"
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    drawn = 0
    for (label, series), marker in zip(lines.items(), "osd^v"):
        points = [s for s in series if s.ok and s.workers]
        if not points:
            continue
        xs = [s.workers for s in points]
        med = [s.median for s in points]
        err = [[s.median - s.min for s in points], [s.max - s.median for s in points]]
        ax.errorbar(xs, med, yerr=err, marker=marker, capsize=3, label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no worker-count series had a successful run"
    workers = sorted({s.workers for series in lines.values() for s in series if s.workers})
    ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.set_yscale("log")
    ax.set_xlabel("workers (processes)")
    ax.set_ylabel("tasks/s (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes: the lines span the whole height, so inside it would hide points.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
