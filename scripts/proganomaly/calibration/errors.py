"""Run a scorer over patches: fit the Gaussian of its per-pixel features (calibrate slides) and collect d² (threshold
slides).

The per-pixel quantities are computed by the same functions the SavedModel serves (the scorer's `features`,
`tf_stats.tf_mahalanobis_d2`), so τ fitted here flags what the exported model flags (bit for bit when both are
compiled alike; XLA may round float32 differently, which moves only pixels within rounding of τ).
"""

from __future__ import annotations

import numpy as np

from proganomaly.calibration import stats

# d² spans many decades, hence log bins.
D2_RANGE = (1e-4, 1e8)
# Seeded interior-pixel positions (mod the interior's pixel count) of the one feature row kept per patch, by the
# patch's index in the dataset modulo the table's length: the same pixel whatever the batch size or device split.
ROW_SEED = 20240618
_ROW_TABLE = np.random.default_rng(ROW_SEED).integers(0, 2**31 - 1, 1 << 16, dtype=np.int64)


def interior(a, border_px: int):
    """The patch interior of an (N, S, S, ...) batch: `border_px` rows and columns dropped on every side."""
    if not border_px:
        return a
    return a[:, border_px:-border_px, border_px:-border_px]


def _per_replica(step, strategy):
    """batch -> one tuple of numpy results per replica (a single tuple without a strategy).

    With a strategy, `step` runs on every replica's shard of the distributed batch inside one tf.function (the way
    MirroredStrategy runs in parallel); nothing is reduced across replicas, every shard's results come back apart.
    """
    if strategy is None:
        return lambda batch: [tuple(np.asarray(t) for t in step(batch))]
    import tensorflow as tf

    @tf.function
    def run(batch):
        return strategy.run(step, args=(batch,))

    def results(batch):
        local = [strategy.experimental_local_results(t) for t in run(batch)]
        return [tuple(np.asarray(t[r]) for t in local) for r in range(len(local[0]))]

    return results


def _replica_meta(batch, keys, strategy) -> list[tuple]:
    """The batch's `keys` as numpy, one tuple per replica in the order of `_per_replica`'s results."""
    if strategy is None:
        return [tuple(np.asarray(batch[k]) for k in keys)]
    local = [strategy.experimental_local_results(batch[k]) for k in keys]
    return [tuple(np.asarray(t[r]) for t in local) for r in range(len(local[0]))]


class _NumpyBatches:
    """The dataset's uint8 batches as numpy, re-iterable (a combined scorer's parts may each stream them)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return self.dataset.as_numpy_iterator()


def indexed(dataset, start: int = 0):
    """{"image": batch, "index": `start` + each patch's position in the dataset (int64)}: what `error_step` takes."""
    import tensorflow as tf

    def add(count, images):
        n = tf.shape(images, out_type=tf.int64)[0]
        return count + n, {"image": images, "index": count + tf.range(n, dtype=tf.int64)}

    return dataset.scan(tf.constant(int(start), tf.int64), add)


def jittered(dataset, draws: np.ndarray, radius: int, start: int):
    """`indexed(dataset, start)` with each patch re-rendered under its row of `draws` (row i for the dataset's i-th
    patch; `augment.apply_appearance`), on the host's uint8 batches before any scorer or device sees them."""
    import tensorflow as tf

    from proganomaly.training import augment

    table = tf.constant(draws, tf.float32)

    def apply(batch):
        params = tf.gather(table, batch["index"] - start)
        return {"image": augment.apply_appearance(batch["image"], params, radius), "index": batch["index"]}

    return indexed(dataset, start).map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def error_step(scorer, edges: np.ndarray, jit_compile: bool = False, border_px: int = 0):
    """{"image", "index"} batch -> its moments, per-channel histogram counts and one feature row per patch (the
    pixel `_ROW_TABLE` picks for the patch's index, float32 (N, C)).

    One row per patch, not every pixel: a per-patch scorer gives each of a patch's pixels the same vector, so the
    patches are the independent observations the covariance's shrinkage must be estimated from. A seeded interior
    pixel rather than the patch's mean, so that for per-pixel scorers too the rows are draws from the very
    distribution whose covariance is shrunk (a patch mean has a smaller, differently correlated spread).
    """
    import tensorflow as tf

    from proganomaly.calibration import tf_stats

    table = tf.constant(_ROW_TABLE)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        e = interior(scorer(batch["image"]), border_px)
        n, mean, m2 = tf_stats.tf_batch_moments(e)
        counts = tf.stack([tf_stats.tf_bin_counts(e[..., c], edges) for c in range(len(scorer.channels))])
        pixels, channels = e.shape[1] * e.shape[2], e.shape[-1]
        pick = tf.gather(table, batch["index"] % table.shape[0]) % pixels
        rows = tf.gather(tf.reshape(e, (-1, pixels, channels)), pick, axis=1, batch_dims=1)
        return n, mean, m2, counts, rows

    return step


def fit_error_distribution(
    scorer,
    dataset,
    edges: np.ndarray,
    *,
    strategy=None,
    progress=None,
    jit_compile: bool = False,
    border_px: int = 0,
    with_rows: bool = False,
    copies: int = 0,
    jitter: dict | None = None,
    seed: int = 0,
) -> tuple[stats.Moments, np.ndarray] | tuple[stats.Moments, np.ndarray, np.ndarray]:
    """Moments of the scorer's per-pixel features over every pixel of every patch, and per-channel histogram counts
    (with `with_rows` also one feature row per patch, float64 (n_patches, C) in dataset order; see `error_step`).

    A scorer with its own state is fitted on the same patches first (on the host's batches, undistributed). With a
    tf.distribute strategy (a MirroredStrategy over `resources.gpus.calibration` GPUs) every global batch is split
    over the replicas and each replica's (n, mean, M2) and counts are merged on the host, so no shard is lost and
    the result equals one device's up to float64 rounding of the merge order. The scorer's model should be built
    under `strategy.scope()`, so each replica reads its own copy of the weights.

    With `copies` = K > 0 the N patches are streamed K more times, copy k under `augment.appearance_draws(N, jitter,
    seed, k)` (stain.calibration_jitter), into the same moments, counts and rows: (K + 1)·N patches in all, copy k's
    i-th patch with index k·N + i (so its row is another seeded pixel). The scorer's own state stays fitted on the
    patches as they are. K = 0 is the unaugmented fit exactly.
    """
    if copies < 0:
        raise ValueError(f"stain.calibration_copies = {copies}: must be >= 0")
    if copies and jitter is None:
        raise ValueError("stain.calibration_copies > 0 needs the jitter ranges (stain.calibration_jitter)")
    if copies:
        from proganomaly.training import augment

        augment.check_jitter(jitter)  # before the first pass, not after it
    if scorer.needs_fit:
        scorer.fit(_NumpyBatches(dataset))
    step = _per_replica(error_step(scorer, edges, jit_compile, border_px), strategy)
    parts, counts, rows = [], np.zeros((len(scorer.channels), len(edges) + 1), np.int64), []
    n_patches = 0
    for copy in range(copies + 1):
        if copy == 0:
            source = indexed(dataset)
        else:
            draws = augment.appearance_draws(n_patches, jitter, seed, copy)
            source = jittered(dataset, draws, augment.defocus_radius(jitter), copy * n_patches)
        if strategy is not None:
            source = strategy.experimental_distribute_dataset(source)
        for batch in source:
            for n, mean, m2, c, r in step(batch):
                if int(n):
                    parts.append(stats.from_batch(n, mean, m2))
                    counts += c
                    rows.append(r.astype(np.float64))
            if progress:
                progress.update()
        if not parts:
            raise stats.StatsError("the calibration records hold no patches")
        if copy == 0:
            n_patches = sum(len(r) for r in rows)  # the copies' draw tables have one row per patch
    if with_rows:
        return stats.merge_all(parts), counts, np.concatenate(rows)
    return stats.merge_all(parts), counts


def d2_step(scorer, gaussian: dict, edges: np.ndarray, jit_compile: bool = False, border_px: int = 0):
    """images -> one batch's d², its moments and its histogram counts; binned on the device, in the compiled
    function. The patches' slide ids and coordinates never enter it: XLA has no string tensors and a GPU cannot hold
    them."""
    import tensorflow as tf

    from proganomaly.calibration import tf_stats

    @tf.function(jit_compile=jit_compile)
    def step(images):
        e = interior(scorer(images), border_px)
        d2 = tf_stats.tf_mahalanobis_d2(e, gaussian["mean"], gaussian["precision"], gaussian.get("directions"))
        return (d2, *tf_stats.tf_batch_moments(d2[..., None]), tf_stats.tf_bin_counts(d2, edges))

    return step


def masked_counts_step(edges: np.ndarray, jit_compile: bool = False):
    """(d2 (N, S, S), masks (M, N, S, S) bool) -> (M, len(edges) + 1) int64: the histogram of d2 under each mask, on
    the device (the same bins and exact float32 comparisons as tf_stats.tf_bin_counts)."""
    import tensorflow as tf

    n_bins = len(edges) + 1
    seq = tf.constant(np.asarray(edges, np.float32)[None, :])

    @tf.function(jit_compile=jit_compile)
    def step(d2, masks):
        idx = tf.reshape(tf.searchsorted(seq, tf.reshape(tf.cast(d2, tf.float32), (1, -1)), side="left"), (-1,))
        m = masks.shape[0]  # static: one trace per number of masks
        # Mask i's values go to bins [i·(n+1), i·(n+1) + n), unmasked ones to the extra bin i·(n+1) + n that is
        # dropped: one segment sum with a constant segment count, so it compiles under XLA.
        segments = tf.where(tf.reshape(masks, (m, -1)), idx[None, :], n_bins) + (n_bins + 1) * tf.range(m)[:, None]
        segments = tf.reshape(segments, (-1,))
        counts = tf.math.unsorted_segment_sum(tf.ones_like(segments), segments, m * (n_bins + 1))
        return tf.cast(tf.reshape(counts, (m, n_bins + 1))[:, :n_bins], tf.int64)

    return step


def collect_d2(
    scorer,
    dataset,
    gaussian: dict,
    edges: np.ndarray,
    *,
    labeller=None,
    max_exact_pixels: int = 0,
    strategy=None,
    progress=None,
    jit_compile: bool = False,
    border_px: int = 0,
    per_slide: bool = False,
) -> dict:
    """Stream d² of every pixel of a `make_dataset(..., with_meta=True)` dataset.

    d² is under `gaussian` ("mean", "precision" and, for one-sided scores, "directions": `tf_stats.tf_mahalanobis_d2`).
    Returns the moments of d² and its histogram counts over every pixel, and the same over the normal pixels only
    (`normal_moments`, `normal_counts`: every pixel of a patch with no annotated pixel, its border included; the τ
    fitted without labels uses these, so annotated anomalies never raise it) with, while they number at most
    `max_exact_pixels`, their d² values (`normal_d2`, for an exact quantile). A patch that touches an annotation is
    left out of the normal pixels whole: per-patch scores (critic, texture) spread over every pixel of the patch and
    per-pixel ones see the anomaly through their receptive field, so its unannotated pixels are not normal evidence;
    `touching_anomaly` counts those patches and their unannotated pixels, `n_anomalous_pixels` the annotated ones.
    With a `labeller` (slide_ids, xs, ys → (labels (N, S, S) bool, labelled (N,) bool)) also the counts of positive
    and negative labelled pixels (every pixel of the labelled patches, with its label: the F-β curve) and, while
    they number at most `max_exact_pixels`, the labelled d² values themselves (for the exact F-β optimum).

    With a tf.distribute strategy each global batch is split over the replicas as in `fit_error_distribution`; the
    batches stay in host memory (the string slide ids cannot be copied to a GPU) and each replica copies its images.

    With `per_slide` also `slides`: {slide_id: the same histograms per slide ("counts" of every pixel,
    "normal_counts", "pos_counts", "neg_counts") and "normal_moments"}, binned on the host with the device's bins
    (calibration.slide_standardisation: each slide's median and MAD of d² come from its all-pixel histogram).
    """
    import tensorflow as tf

    step = _per_replica(d2_step(scorer, gaussian, edges, jit_compile, border_px), strategy)
    label_counts = masked_counts_step(edges, jit_compile)
    if strategy is not None:
        host = tf.distribute.InputOptions(experimental_fetch_to_device=False)
        dataset = strategy.experimental_distribute_dataset(dataset, host)
    n_bins = len(edges) + 1
    parts, counts = [], np.zeros(n_bins, np.int64)
    pos, neg = np.zeros(n_bins, np.int64), np.zeros(n_bins, np.int64)
    kept_d2, kept_labels, n_labelled, exact = [], [], 0, max_exact_pixels > 0
    normal_parts, normal_counts, kept_normal, n_normal = [], np.zeros(n_bins, np.int64), [], 0
    touching, touching_normal, n_anomalous = 0, 0, 0
    slides: dict[str, dict] = {}
    for batch in dataset:
        replicas = zip(step(batch["image"]), _replica_meta(batch, ("slide_id", "x", "y"), strategy), strict=True)
        for (d2, n, mean, m2, c), (slide_ids, xs, ys) in replicas:
            if not int(n):
                continue
            parts.append(stats.from_batch(n, mean, m2))
            counts += c
            labels, labelled = labeller(slide_ids, xs, ys) if labeller is not None else (None, None)
            if labels is not None:
                # any annotated pixel of the whole patch, its border too: the patch's features saw it
                touched = labelled & labels.reshape(len(labels), -1).any(axis=1)
                labels = interior(labels, border_px)
            if labels is None or not labelled.any():
                d2_n = d2.ravel()
                normal_counts += c  # every pixel is normal: the device's counts of the batch
            else:
                d2_n = d2[~touched]
                touching += int(touched.sum())
                touching_normal += int((~labels[touched]).sum())
                n_anomalous += int(labels[labelled].sum())
                on = np.broadcast_to(labelled[:, None, None], labels.shape)
                clean = np.broadcast_to(~touched[:, None, None], labels.shape)
                by_mask = label_counts(d2, np.stack([clean, on & labels, on & ~labels])).numpy()
                normal_counts += by_mask[0]
                pos += by_mask[1]
                neg += by_mask[2]
            if per_slide:
                clean_patches = None if labels is None or not labelled.any() else ~touched
                _add_slide_counts(slides, d2, slide_ids, clean_patches, labels, labelled, edges)
            normal_parts.append(stats.moments_of(d2_n.ravel()))
            n_normal += d2_n.size
            if kept_normal is not None and n_normal <= max_exact_pixels:
                kept_normal.append(d2_n.ravel().astype(np.float32))
            else:
                kept_normal = None
            if labeller is None or not labelled.any():
                continue
            d2_l, lab_l = d2[labelled].ravel(), labels[labelled].ravel()
            n_labelled += d2_l.size
            if exact and n_labelled <= max_exact_pixels:
                kept_d2.append(d2_l.astype(np.float32))
                kept_labels.append(lab_l)
            elif exact:
                exact, kept_d2, kept_labels = False, [], []
        if progress:
            progress.update()
    if not parts:
        raise stats.StatsError("the threshold records hold no patches")
    out = {"moments": stats.merge_all(parts), "counts": counts, "n_labelled": n_labelled}
    out.update(touching_anomaly={"patches": touching, "normal_pixels": touching_normal}, n_anomalous_pixels=n_anomalous)
    out.update(normal_moments=stats.merge_all(normal_parts) if n_normal else None, normal_counts=normal_counts)
    if kept_normal:
        out["normal_d2"] = np.concatenate(kept_normal)
    if per_slide:
        for acc in slides.values():
            parts_s = acc.pop("normal_parts")
            acc["normal_moments"] = stats.merge_all(parts_s) if parts_s else None
        out["slides"] = slides
    if labeller is not None:
        out.update(pos_counts=pos, neg_counts=neg)
        if exact and n_labelled:
            out.update(d2=np.concatenate(kept_d2), labels=np.concatenate(kept_labels))
    return out


def _add_slide_counts(slides: dict, d2, slide_ids, clean_patches, labels, labelled, edges) -> None:
    """Add one replica batch's per-slide histograms to `slides` (collect_d2's `per_slide`). `clean_patches`: (N,)
    bool, the patches that count as normal (None: all of them); `labels`/`labelled` as the labeller returns them,
    cut to the interior."""
    n_bins = len(edges) + 1
    # the same float32 comparisons as the device's tf_stats.tf_bin_counts, so the slides' counts add up to its counts
    idx = np.searchsorted(np.asarray(edges, np.float32), np.asarray(d2, np.float32), side="left")
    ids = np.asarray([s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(slide_ids).ravel()])

    def count(values):
        return np.bincount(values.ravel(), minlength=n_bins).astype(np.int64)

    for slide in np.unique(ids):
        acc = slides.setdefault(
            str(slide), {k: np.zeros(n_bins, np.int64) for k in ("counts", "normal_counts", "pos_counts", "neg_counts")}
        )
        acc.setdefault("normal_parts", [])
        sel = ids == slide
        acc["counts"] += count(idx[sel])
        keep = sel if clean_patches is None else sel & clean_patches
        if keep.any():
            acc["normal_counts"] += count(idx[keep])
            acc["normal_parts"].append(stats.moments_of(np.asarray(d2)[keep].ravel()))
        if labels is not None:
            on = sel & np.asarray(labelled, bool)
            if on.any():
                lab = np.asarray(labels)[on]
                acc["pos_counts"] += count(idx[on][lab])
                acc["neg_counts"] += count(idx[on][~lab])


def make_labeller(lookup: dict, geoms: dict, size: int):
    """labeller for `collect_d2`: patches of slides in `geoms` (slide_id → prepared union) are labelled."""
    from proganomaly.data.patch_labels import extents_of, patch_labels

    def labeller(slide_ids, xs, ys):
        ids = np.asarray([s.decode() if isinstance(s, bytes) else str(s) for s in slide_ids])
        labels = np.zeros((len(ids), size, size), bool)
        labelled = np.isin(ids, list(geoms))
        if labelled.any():
            idx = np.flatnonzero(labelled)
            w, h = extents_of(lookup, ids[idx], np.asarray(xs)[idx], np.asarray(ys)[idx])
            for slide in np.unique(ids[idx]):
                sel = ids[idx] == slide
                labels[idx[sel]] = patch_labels(
                    geoms[slide], np.asarray(xs)[idx][sel], np.asarray(ys)[idx][sel], w[sel], h[sel], size
                )
        return labels, labelled

    return labeller
