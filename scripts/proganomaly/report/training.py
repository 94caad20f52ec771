"""Training figures from results/detectors/{detector}/model/loss_log.csv (one row per logged step) and the held-out error log.

The loss log's columns are the training step's loss names (proganomaly.model.losses, training.loop): critic terms
end in `-D(x)` / `_gradient_penalty` / `_wgan_gp` (plus `epsilon_drift_penalty`); adversarial terms end in
`_for_generator`; reconstruction terms end in `_l1` / `_l2`. Progress and phase columns are found by name from short
candidate lists, so a renamed counter fails with a message naming the columns. The held-out log is
results/detectors/{detector}/model/heldout_error.csv (training.loop.HELDOUT_FIELDS).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from proganomaly.report import style

X_CANDIDATES = ("images", "images_seen", "global_images", "kimg", "global_step", "step")
PHASE_CANDIDATES = ("phase_name", "phase", "growth", "phase_index")
TIME_CANDIDATES = ("wall_seconds", "elapsed_seconds", "elapsed_s", "seconds", "time", "wall_time")
RATE_CANDIDATES = ("images_per_second", "images_per_s", "img_per_s", "throughput")
GROUPS = ("critic", "adversarial", "reconstruction")
# Critic-side loss terms (the Wasserstein estimate, its gradient penalty, their sum per fake type, drift); raw critic
# scores such as `D(x)` and the totals are left out: they are sums or inputs of the terms shown.
_CRITIC = re.compile(r"-D\(x\)$|_gradient_penalty$|_wgan_gp$|^epsilon_drift_penalty$")
_ADVERSARIAL = re.compile(r"_for_generator$")
_RECONSTRUCTION = re.compile(r"_l[12]$")


def pick(columns, candidates, what: str, required: bool = True) -> str | None:
    for name in candidates:
        if name in columns:
            return name
    if required:
        raise ValueError(f"loss log has no {what} column (looked for {list(candidates)}; has {list(columns)})")
    return None


def loss_group(name: str) -> str | None:
    """critic | adversarial | reconstruction for a loss column, None for totals, scores, regularisers and counters."""
    for group, pattern in (("critic", _CRITIC), ("adversarial", _ADVERSARIAL), ("reconstruction", _RECONSTRUCTION)):
        if pattern.search(name):
            return group
    return None


def long_losses(log: pd.DataFrame) -> pd.DataFrame:
    """(x, phase, group, term, value) rows of every grouped loss column."""
    x = pick(log.columns, X_CANDIDATES, "progress (images or step)")
    phase = pick(log.columns, PHASE_CANDIDATES, "phase", required=False)
    terms = [c for c in log.columns if loss_group(c)]
    if not terms:
        raise ValueError(f"loss log has no critic, adversarial or reconstruction column: {list(log.columns)}")
    frame = log.assign(_phase=log[phase].astype(str) if phase else "all")
    long = frame.melt(id_vars=[x, "_phase"], value_vars=terms, var_name="term", value_name="value")
    long["group"] = long["term"].map(loss_group)
    return long.rename(columns={x: "x", "_phase": "phase"})


def phase_spans(log: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(phase, first x, last x) in log order; a phase that recurs (resume) is merged into one span."""
    x = pick(log.columns, X_CANDIDATES, "progress (images or step)")
    phase = pick(log.columns, PHASE_CANDIDATES, "phase", required=False)
    if phase is None or log.empty:
        return []
    g = log.groupby(log[phase].astype(str), sort=False)[x].agg(["min", "max"])
    return [(str(p), float(r["min"]), float(r["max"])) for p, r in g.iterrows()]


def _shade_phases(ax, spans, label: bool) -> None:
    for i, (name, lo, hi) in enumerate(spans):
        if i % 2:
            ax.axvspan(lo, hi, color="0.92", zorder=0)
        if label:
            ax.text((lo + hi) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, rotation=90 if len(spans) > 4 else 0)  # fmt: skip


def smooth(values: pd.Series, window: int) -> pd.Series:
    return values.rolling(window, min_periods=1, center=True).mean()


def plot_losses(log: pd.DataFrame, smooth_points: int = 50):
    """Critic, adversarial and reconstruction terms against images seen, growth phases shaded and named.

    Like the original's loss notebook: a rolling mean over `smooth_points` log rows (within a phase) and y limits
    at the 1st–99th percentile, so a few spikes at a phase start do not flatten the curves.
    """
    long = long_losses(log)
    spans = phase_spans(log)
    groups = [g for g in GROUPS if (long["group"] == g).any()]
    xname = pick(log.columns, X_CANDIDATES, "progress")
    fig, axes = style.subplots(len(groups), 1, panel=(10.0, 2.8), sharex=True)
    window = max(1, min(smooth_points, len(log) // 20 or 1))
    for k, (ax, group) in enumerate(zip(axes[:, 0], groups, strict=True)):
        part = long[long["group"] == group].copy()
        part["smoothed"] = part.groupby(["term", "phase"], sort=False)["value"].transform(smooth, window)
        style.sns.lineplot(data=part, x="x", y="smoothed", hue="term", ax=ax, linewidth=1.2, estimator=None,
                           units="phase", sort=False)  # fmt: skip
        finite = part["smoothed"].replace([np.inf, -np.inf], np.nan).dropna()
        if len(finite):
            lo, hi = np.percentile(finite, [1, 99])
            pad = 0.05 * (hi - lo or abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        _shade_phases(ax, spans, label=k == 0)
        ax.set_ylabel(f"{group} loss")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title=None)
    axes[-1, 0].set_xlabel({"kimg": "thousands of images seen"}.get(xname, f"{xname.replace('_', ' ')} (count)"))
    fig.suptitle("Training losses per growth phase" + (f" (rolling mean of {window} log rows)" if window > 1 else ""))
    return fig


def throughput(log: pd.DataFrame) -> pd.DataFrame:
    """Median images/s per phase, from a rate column or from (images, wall time) differences within a phase."""
    phase = pick(log.columns, PHASE_CANDIDATES, "phase", required=False)
    groups = log[phase].astype(str) if phase else pd.Series("all", index=log.index)
    rate = pick(log.columns, RATE_CANDIDATES, "rate", required=False)
    if rate is not None:
        rates = log[rate].astype(np.float64)
    else:
        x = pick(log.columns, ("images", "images_seen", "global_images"), "images seen")
        t = pick(log.columns, TIME_CANDIDATES, "wall time")
        d_img = log.groupby(groups, sort=False)[x].diff()
        d_t = log.groupby(groups, sort=False)[t].diff()
        rates = (d_img / d_t.where(d_t > 0)).astype(np.float64)
    out = pd.DataFrame({"phase": groups, "rate": rates}).dropna()
    return out.groupby("phase", sort=False)["rate"].median().rename("images_per_second").reset_index()


def plot_throughput(table: pd.DataFrame, device: str = ""):
    fig, axes = style.subplots(panel=(max(4.0, 0.7 * len(table) + 2), 3.2))
    ax = axes[0, 0]
    bars = ax.bar(table["phase"], table["images_per_second"], color=style.NORMAL_COLOR)
    ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
    ax.set_xlabel("growth phase")
    ax.set_ylabel("training throughput (images/s, median)")
    ax.set_title("Training speed" + (f" on {device}" if device else ""))
    ax.tick_params(axis="x", labelrotation=45 if len(table) > 4 else 0)
    ax.margins(y=0.15)
    return fig


HELDOUT_SERIES = (
    ("l1_full", "reconstruction, upsampled to full size", "-"),
    ("l1_full_floor", "floor: input downscaled and upsampled", ":"),
    ("l1", "reconstruction at the phase's resolution", "--"),
)


def plot_heldout(table: pd.DataFrame):
    """Mean L1 and L2 errors of the held-out patches after each phase against images seen.

    The full-size error of a low-resolution phase cannot beat the floor (the input itself downscaled and upsampled);
    the gap to the floor is what the generator still gets wrong.
    """
    missing = [c for c in ("images_seen", "l1", "l2", "l1_full", "l2_full") if c not in table.columns]
    if missing:
        raise ValueError(f"held-out error table lacks {missing}; has {list(table.columns)}")
    fig, axes = style.subplots(1, 2, panel=(5.5, 3.6))
    for ax, norm in zip(axes[0], ("l1", "l2"), strict=True):
        for col, label, ls in HELDOUT_SERIES:
            col = col.replace("l1", norm)
            if col in table.columns:
                ax.plot(table["images_seen"], table[col], linestyle=ls, marker="o", markersize=3, label=label)
        if "phase" in table.columns:
            for x, name in zip(table["images_seen"], table["phase"].astype(str), strict=True):
                ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                            ha="center", va="top", color="0.4")  # fmt: skip
        ax.set_xlabel("images seen (count)")
        ax.set_ylabel("mean absolute error (image units)" if norm == "l1" else "mean squared error (image units²)")
        ax.set_title(f"Held-out {norm.upper()} error")
    axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(
        f"Held-out reconstruction error ({int(table['examples'].max()) if 'examples' in table else '?'} calibrate patches)"
    )
    return fig
