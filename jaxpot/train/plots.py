"""PNG plots of a training run (matplotlib, Agg backend): learning curve and parity plots."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_learning_curve", "plot_parity", "save_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(history: list[dict], path: str | os.PathLike) -> None:
    """Train/valid loss and validation energy/force MAE against epoch (log scale)."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.semilogy(ep, [h["train_loss"] for h in history], label="train")
    ax.semilogy(ep, [h["valid_loss"] for h in history], label="valid (EMA)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    nan = float("nan")  # a metric the labels do not allow (no energies, no forces) is a gap
    axes[1].semilogy(ep, [h.get("energy_mae_mev_per_atom", nan) for h in history])
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("valid energy MAE (meV/atom)")
    axes[2].semilogy(ep, [max(h.get("force_mae_mev_per_a", nan), 1e-12) for h in history])
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("valid force MAE (meV/Å)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(predictions: dict, path: str | os.PathLike, *, title: str = "") -> None:
    """Predicted against reference energy per atom (eV/atom) and force components (eV/Å)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    pairs = [("energy", "energy per atom (eV/atom)"), ("forces", "force component (eV/Å)")]
    for ax, (k, label) in zip(axes, pairs, strict=False):
        ref = np.asarray(predictions[f"{k}_ref"]).reshape(-1)
        pred = np.asarray(predictions[f"{k}_pred"]).reshape(-1)
        if ref.size:
            ax.plot(ref, pred, ".", ms=2, alpha=0.5)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            mae = np.mean(np.abs(pred - ref))
            unit = "meV/atom" if k == "energy" else "meV/Å"
            ax.set_title(f"{title} MAE {1e3 * mae:.2f} {unit}")
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_plots(out_dir: str | os.PathLike, history: list[dict],
               predictions: dict | None = None) -> list[str]:
    """Write ``learning_curve.png`` and ``parity.png`` into ``out_dir``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if history:
        p = os.path.join(out_dir, "learning_curve.png")
        plot_learning_curve(history, p)
        paths.append(p)
    if predictions is not None:
        p = os.path.join(out_dir, "parity.png")
        plot_parity(predictions, p, title="valid")
        paths.append(p)
    return paths
