"""Calibration figures from results/detectors/{detector}/calibration/{error_distribution,threshold}.json (histograms are stored there)."""

from __future__ import annotations

import numpy as np

from proganomaly.report import style


def histogram_arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) of a `stats.histogram_record`; the open tails are dropped (they have no finite width)."""
    edges = np.asarray(record["edges"], np.float64)
    counts = np.asarray(record["counts"], np.float64)
    if counts.size != edges.size - 1:
        raise ValueError(f"histogram has {counts.size} counts for {edges.size} edges (expected edges − 1)")
    return edges, counts


def rebin(edges: np.ndarray, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of `factor` neighbouring bins (the last run may be shorter); counts are summed exactly."""
    factor = max(int(factor), 1)
    starts = np.arange(0, counts.size, factor)
    return np.append(edges[starts], edges[-1]), np.add.reduceat(counts, starts)


def plot_error_distribution(ed: dict, max_bins: int = 120):
    """Per-channel histograms of e = |x − G(x)| (density, log scale) with the fitted means, and the correlation."""
    fig, axes = style.subplots(1, 2, panel=(5.2, 3.6), width_ratios=[1.6, 1.0])
    ax, ax_corr = axes[0]
    channels = ed.get("channels", ["R", "G", "B"])
    upper = max(float(ed["histograms"][c]["quantiles"].get("0.999", 2.0)) for c in channels)
    for i, ch in enumerate(channels):
        edges, counts = histogram_arrays(ed["histograms"][ch])
        keep = edges[:-1] < upper * 1.05 + 1e-9
        n_keep = int(keep.sum()) or counts.size
        e, c = rebin(edges[: n_keep + 1], counts[:n_keep], int(np.ceil(n_keep / max_bins)))
        total = ed["histograms"][ch]["total"]
        density = c / np.diff(e) / max(total, 1)
        color = style.CHANNEL_COLORS.get(ch)
        ax.stairs(density, e, label=f"{ch} (mean {ed['mean'][i]:.3g})", color=color, linewidth=1.4)
        ax.axvline(ed["mean"][i], color=color, linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("reconstruction error |x − G(x)| (image units, x ∈ [−1, 1])")
    ax.set_ylabel("density (1 / error unit)")
    ax.set_title(f"Error distribution: {ed.get('n_pixels', 0):,} calibrate pixels")
    ax.legend(title="channel", fontsize=8)

    cov = np.asarray(ed["covariance"], np.float64)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd) if np.all(sd > 0) else np.full_like(cov, np.nan)
    style.sns.heatmap(
        corr, ax=ax_corr, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", square=True,
        xticklabels=channels, yticklabels=channels, cbar_kws={"label": "correlation coefficient", "shrink": 0.8},
    )  # fmt: skip
    ax_corr.set_title("Error correlation (fitted Σ)")
    ax_corr.set_xlabel("channel")
    ax_corr.set_ylabel("channel")
    return fig


def taus(th: dict) -> list[tuple[str, float, bool]]:
    """(label, τ, is_the_exported_one) for the unsupervised and, when fitted, the supervised threshold."""
    out = []
    for method in ("unsupervised", "supervised"):
        rec = th.get(method)
        if rec:
            detail = f"k = {rec['k']:g}" if method == "unsupervised" else f"F-{rec['beta']:g} = {rec['f_beta']:.3f}"
            out.append((f"τ {method} = {rec['tau']:.4g} ({detail})", float(rec["tau"]), th.get("method") == method))
    return out


def plot_d2_histogram(th: dict):
    """d² of the threshold-slide pixels on log bins (per label when annotated), with τ marked."""
    fig, axes = style.subplots(panel=(7.5, 3.8))
    ax = axes[0, 0]
    series = [("all pixels", th["d2_histogram"], "0.3")]
    by_label = th.get("d2_histogram_by_label") or {}
    for name, color in (("normal", style.NORMAL_COLOR), ("anomalous", style.ANOMALY_COLOR)):
        if by_label.get(name):
            series.append((f"annotated {name}", by_label[name], color))
    lo, hi = np.inf, 0.0
    for name, record, color in series:
        edges, counts = histogram_arrays(record)
        if counts.sum() == 0:
            continue
        nz = np.flatnonzero(counts)
        lo, hi = min(lo, edges[nz[0]]), max(hi, edges[nz[-1] + 1])
        # fraction per log-decade, so bins of different widths compare and the curve's area is 1 on a log axis
        dens = counts / counts.sum() / np.diff(np.log10(edges))
        ax.stairs(dens, edges, label=f"{name} ({int(record['total']):,} px)", color=color, linewidth=1.4)
    for label, tau, chosen in taus(th):
        ax.axvline(tau, color=style.TAU_COLOR, linestyle="-" if chosen else "--", linewidth=1.6 if chosen else 1.0)
        ax.plot(
            [], [], color=style.TAU_COLOR, linestyle="-" if chosen else "--", label=label + (" *" if chosen else "")
        )
        lo, hi = min(lo, tau), max(hi, tau)
    ax.set_xscale("log")
    if np.isfinite(lo) and hi > 0:
        ax.set_xlim(lo / 2, hi * 2)
    ax.set_xlabel("squared Mahalanobis distance d² (dimensionless)")
    ax.set_ylabel("fraction of pixels per decade of d²")
    ax.set_title("d² on the threshold slides (* = exported τ)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_fbeta_curve(th: dict):
    """F-β, precision and recall of the annotated threshold pixels against τ, best τ marked."""
    sup = th.get("supervised")
    if not sup or not sup.get("curve"):
        return style.message_figure("Supervised threshold", "No annotated threshold slide: only the unsupervised τ.")
    curve = sup["curve"]
    t = np.asarray(curve["thresholds"], np.float64)
    fig, axes = style.subplots(panel=(7.5, 3.8))
    ax = axes[0, 0]
    positive = t > 0  # the 'flag everything' candidate may sit at or below 0, which a log axis cannot show
    for key, label, color in (
        ("f", f"F-{sup['beta']:g}", "black"),
        ("precision", "precision", style.PREDICTION_COLOR),
        ("recall", "recall", style.ANNOTATION_COLOR),
    ):
        y = np.asarray([np.nan if v is None else v for v in curve[key]], np.float64)
        ax.plot(t[positive], y[positive], label=label, color=color, linewidth=1.6 if key == "f" else 1.0)
    ax.axvline(sup["tau"], color=style.TAU_COLOR, linestyle="--", linewidth=1)
    ax.plot([sup["tau"]], [sup["f_beta"]], "o", color=style.TAU_COLOR, label=f"best τ = {sup['tau']:.4g}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("threshold τ on d² (dimensionless)")
    ax.set_ylabel("score (fraction)")
    ax.set_title(f"Supervised τ: F-{sup['beta']:g} over {sup['n_labelled']:,} labelled pixels")
    ax.legend(fontsize=8)
    return fig
