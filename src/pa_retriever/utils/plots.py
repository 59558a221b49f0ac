"""Figures written to PNG files, off-screen (no display on servers and CI), and sent to loggers that show images;
matplotlib is imported on first use."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_figures(loggers: list, figures: dict[str, Path]) -> None:
    """Send PNG figures to loggers that take images (W&B); the files stay in the run dir for the others."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            for key, path in figures.items():
                logger.log_image(key=key, images=[str(path)])
