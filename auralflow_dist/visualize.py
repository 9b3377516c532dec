"""Pictures people would rather see than numbers: loss curves, spectrograms, waveforms (PNG).

Figures are rendered off-screen (Agg) into bytes so they can be written to any storage URL.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def figure_png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def loss_curve(history: Sequence[Mapping[str, float]], title: str = "training") -> bytes:
    """Train/validation loss and validation SI-SDR per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_sdr) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_sdr.plot(epochs, [h["val_si_sdr"] for h in history], "o-", label="estimate")
    ax_sdr.plot(epochs, [h["val_si_sdr_mixture"] for h in history], "--", label="mixture")
    ax_sdr.set_xlabel("epoch")
    ax_sdr.set_ylabel("validation SI-SDR (dB)")
    ax_sdr.legend()
    ax_sdr.grid(alpha=0.3)
    fig.suptitle(title)
    return figure_png(fig)


def spectrograms(
    panels: Mapping[str, np.ndarray], sample_rate: int, hop_length: int, title: str = ""
) -> bytes:
    """Log-magnitude spectrograms (freq, frames) side by side on one colour scale."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    db = {k: 20 * np.log10(np.maximum(v, 1e-5)) for k, v in panels.items()}
    top = max(float(v.max()) for v in db.values())
    for ax, (name, values) in zip(axes[0], db.items(), strict=True):
        frames = values.shape[1]
        extent = (0, frames * hop_length / sample_rate, 0, sample_rate / 2000)
        im = ax.imshow(
            values,
            origin="lower",
            aspect="auto",
            extent=extent,
            cmap="magma",
            vmin=top - 80,
            vmax=top,
        )
        ax.set_title(name)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("kHz" if ax is axes[0][0] else "")
    fig.colorbar(im, ax=axes[0].tolist(), label="dB")
    fig.suptitle(title)
    return figure_png(fig)


def waveforms(panels: Mapping[str, np.ndarray], sample_rate: int, title: str = "") -> bytes:
    """Waveforms (samples,) stacked on a shared time axis."""
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, 1.6 * len(panels)), sharex=True, squeeze=False
    )
    for ax, (name, values) in zip(axes[:, 0], panels.items(), strict=True):
        t = np.arange(values.shape[-1]) / sample_rate
        ax.plot(t, values, linewidth=0.5)
        ax.set_ylabel(name)
        ax.set_ylim(-1, 1)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    return figure_png(fig)


def bar_scores(
    names: Sequence[str], scores: Mapping[str, Sequence[float]], ylabel: str, title: str = ""
) -> bytes:
    """Per-item scores as grouped bars (one group per item, one bar per metric)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4))
    width = 0.8 / max(1, len(scores))
    x = np.arange(len(names))
    for i, (label, values) in enumerate(scores.items()):
        ax.bar(x + i * width, values, width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.legend()
    ax.set_title(title)
    return figure_png(fig)
