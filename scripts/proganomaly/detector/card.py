"""The exported detector's model card: what it is and what it was made from, with checksums."""

from __future__ import annotations

from proganomaly.common.io import sha256_file


def model_card(
    *, config: dict, metadata: dict, model_files: dict, manifests: dict, error_distribution: dict, threshold: dict
) -> dict:
    """Files with sha256, statistics, τ and the serving interface."""

    def files(paths):
        return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]

    return {
        "name": "proganomaly detector",
        "architecture": metadata["architecture"],
        "scorer": metadata["scorer"],
        "patch_size_px": metadata["patch_size_px"],
        "serving": {
            "signature": "serving_default",
            "input": metadata["input"],
            "outputs": metadata["outputs"],
            "value_range": metadata["value_range"],
            "jit_compile": metadata["jit_compile"],
            "loader": "proganomaly.detector.load.load_detector(path) checks shape and dtype",
        },
        "model_files": {name: files([p])[0] for name, p in model_files.items()},
        "data_manifests": {split: files(paths) for split, paths in manifests.items()},
        "error_distribution": {
            k: error_distribution.get(k)
            for k in ("scorer", "n_pixels", "n_patches", "mean", "covariance", "precision", "precision_cholesky")
        },
        "threshold": {
            "tau": metadata["tau"],
            "method": threshold.get("method"),
            "unsupervised": threshold.get("unsupervised"),
            "supervised": threshold.get("supervised"),
        },
        "config": config,
    }
