"""Per-resolution TFRecords of a slide's patches: write them with a manifest, read them back as tf.data.

One record file set per resolution (4×4 … patch size), each a list of shards of at most `shard_max_examples`
PNG-encoded patches with the original P-CEAD schema (image/encoded, image/name, image/width, image/height) plus
slide_id, x, y. Later stages count examples from the manifest, never from a typed-in dataset length.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from proganomaly.common.io import sha256_file

DOWNSCALE_METHOD = "area"
FEATURES = ("image/encoded", "image/name", "image/width", "image/height", "slide_id", "x", "y")


class RecordsError(ValueError):
    """Records or their manifest are missing, inconsistent or corrupt."""


def downscale_area(patch: np.ndarray, size: int) -> np.ndarray:
    """Exact area (box) average of a square uint8 patch to `size`×`size`, rounded half up.

    The patch side must be a multiple of `size` (always true for the power-of-two resolutions), so every output pixel
    is the mean of a whole block: antialiased, with no interpolation weights to disagree about.
    """
    side = patch.shape[0]
    if patch.shape[1] != side or side % size:
        raise ValueError(f"cannot area-downscale a {patch.shape[:2]} patch to {size}×{size}")
    f = side // size
    if f == 1:
        return patch.copy()
    blocks = patch.reshape(size, f, size, f, -1).astype(np.uint32).sum(axis=(1, 3))
    n = f * f
    return ((blocks + n // 2) // n).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: these files are read once per epoch; speed of writing matters more than a few % of size.
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def patch_name(slide_id: str, x: int, y: int, width: int, height: int) -> str:
    """The original's naming (x, y of the top-left corner at level 0), parsed by regex, never by '_' tokens."""
    return f"{slide_id}_x_{x}_y_{y}_width_{width}_height_{height}.png"


def serialize_example(png: bytes, name: str, size: int, slide_id: str, x: int, y: int) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feats = {
        "image/encoded": b(png),
        "image/name": b(name.encode()),
        "image/width": i(size),
        "image/height": i(size),
        "slide_id": b(slide_id.encode()),
        "x": i(x),
        "y": i(y),
    }
    # deterministic=True sorts the feature map, so the same patches give byte-identical (checksum-stable) files.
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


class _ShardedWriter:
    """Writes one resolution's examples into shards `{size}px-{k:03d}.tfrecord`, renamed into place on close."""

    def __init__(self, out_dir: Path, size: int, shard_max: int):
        self.out_dir, self.size, self.shard_max = out_dir, size, shard_max
        self.shards: list[dict] = []
        self._writer = None

    def write(self, record: bytes) -> None:
        import tensorflow as tf

        if self._writer is None or self.shards[-1]["count"] >= self.shard_max:
            self._close_current()
            name = f"{self.size}px-{len(self.shards):03d}.tfrecord"
            self.shards.append({"file": name, "count": 0})
            self._writer = tf.io.TFRecordWriter(str(self.out_dir / (name + ".partial")))
        self._writer.write(record)
        self.shards[-1]["count"] += 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            name = self.shards[-1]["file"]
            (self.out_dir / (name + ".partial")).replace(self.out_dir / name)

    def close(self) -> list[dict]:
        self._close_current()
        for shard in self.shards:
            shard["sha256"] = sha256_file(self.out_dir / shard["file"])
        return self.shards


def write_records(
    patches: Iterable[tuple[int, int, int, int, np.ndarray]],
    slide_id: str,
    out_dir: str | Path,
    sizes: list[int],
    shard_max_examples: int,
    on_patch: Callable[[], None] | None = None,
) -> dict[str, dict]:
    """Write (x, y, width, height, patch) tuples at every size; returns per-size {count, shards} for the manifest.

    A slide with no patches gets no shard files and counts of zero.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {s: _ShardedWriter(out_dir, s, shard_max_examples) for s in sizes}
    for x, y, w, h, patch in patches:
        name = patch_name(slide_id, x, y, w, h)
        for size in sizes:
            png = encode_png(downscale_area(patch, size))
            writers[size].write(serialize_example(png, name, size, slide_id, x, y))
        if on_patch:
            on_patch()
    out = {}
    for size, writer in writers.items():
        shards = writer.close()
        out[str(size)] = {"count": sum(s["count"] for s in shards), "shards": shards}
    return out


def write_slide_records(
    slide, patches, out_dir, sizes, shard_max_examples, patch_size_px, on_patch=None, transform=None
) -> dict:
    """Read every patch of a patch table from an open slide (area-resampled to patch_size_px) and write its records.

    ``transform`` (uint8 patch → uint8 patch, e.g. the slide's stain normalisation) is applied to each patch as read,
    before the lower resolutions are computed from it.
    """
    from proganomaly.data.slide import read_patch

    slide_ids = patches["slide_id"].unique() if len(patches) else []
    if len(slide_ids) > 1:
        raise RecordsError(f"patch table holds several slides: {list(slide_ids)}")
    slide_id = str(slide_ids[0]) if len(slide_ids) else Path(out_dir).name

    def stream() -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        for row in patches.itertuples(index=False):
            if row.width != row.height:
                raise RecordsError(f"{slide_id}: patch at ({row.x}, {row.y}) is not square ({row.width}×{row.height})")
            patch = read_patch(slide, row.x, row.y, row.width, patch_size_px)
            yield row.x, row.y, row.width, row.height, patch if transform is None else transform(patch)

    return write_records(stream(), slide_id, out_dir, sizes, shard_max_examples, on_patch)


def build_manifest(slide_id: str, out_dir: str | Path, resolutions: dict, patch_size_px: int, **extra) -> dict:
    """The manifest of a slide's records; shard paths are relative to the manifest's folder via `records_dir`."""
    return {
        "slide_id": slide_id,
        "records_dir": Path(out_dir).name,
        "patch_size_px": patch_size_px,
        "downscale_method": DOWNSCALE_METHOD,
        "downscale_detail": "exact box average of the patch (at patch_size_px) over 2^k×2^k blocks, rounded half up",
        "encoding": "png",
        "features": list(FEATURES),
        "resolutions": resolutions,
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------- reading


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordsError(f"{path}: manifest does not exist (run the write_records rule for this slide)") from None
    except json.JSONDecodeError as err:
        raise RecordsError(f"{path}: manifest is not valid JSON ({err}); delete it and rerun write_records") from None
    manifest["_dir"] = str(path.parent / manifest["records_dir"])
    return manifest


def shard_files(manifest_paths: Iterable[str | Path], size: int) -> list[str]:
    files = []
    for mpath in manifest_paths:
        manifest = read_manifest(mpath)
        entry = manifest["resolutions"].get(str(size))
        if entry is None:
            raise RecordsError(f"{mpath}: no {size}px records (has {sorted(manifest['resolutions'], key=int)})")
        files += [str(Path(manifest["_dir"]) / s["file"]) for s in entry["shards"]]
    return files


def count_examples(manifest_paths: Iterable[str | Path], size: int) -> int:
    total = 0
    for mpath in manifest_paths:
        entry = read_manifest(mpath)["resolutions"].get(str(size))
        if entry is None:
            raise RecordsError(f"{mpath}: no {size}px records")
        total += int(entry["count"])
    return total


def buffer_examples(manifest_paths: Iterable[str | Path], size: int, budget_mb: float) -> int:
    """Examples that fit a shuffle buffer of `budget_mb` MiB: the budget over the mean encoded record size (the
    shards' bytes over their example count), at least one."""
    files = shard_files(manifest_paths, size)
    n = count_examples(manifest_paths, size)
    per_example = sum(Path(f).stat().st_size for f in files) / max(n, 1)
    return max(int(budget_mb * 2**20 / max(per_example, 1.0)), 1)


def verify_manifest(path: str | Path) -> None:
    """Check that every shard exists and matches its recorded checksum."""
    manifest = read_manifest(path)
    for size, entry in manifest["resolutions"].items():
        for shard in entry["shards"]:
            f = Path(manifest["_dir"]) / shard["file"]
            if not f.is_file():
                raise RecordsError(f"{path}: shard {f} is missing; rerun write_records for {manifest['slide_id']}")
            if sha256_file(f) != shard["sha256"]:
                raise RecordsError(f"{path}: shard {f} ({size}px) does not match its checksum; rerun write_records")


def parse_example(serialized, size: int, with_meta: bool = False):
    import tensorflow as tf

    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "slide_id": tf.io.FixedLenFeature([], tf.string),
        "x": tf.io.FixedLenFeature([], tf.int64),
        "y": tf.io.FixedLenFeature([], tf.int64),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    image = tf.ensure_shape(tf.io.decode_png(ex["image/encoded"], channels=3), (size, size, 3))
    if not with_meta:
        return image
    return {"image": image, "slide_id": ex["slide_id"], "x": ex["x"], "y": ex["y"]}


def make_dataset(
    manifest_paths: Iterable[str | Path],
    size: int,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    with_meta: bool = False,
    shuffle_buffer: int = 4096,
):
    """uint8 (size, size, 3) images (or dicts with slide_id, x, y when with_meta) from the manifests' records.

    Deterministic for a given seed: shard order and the shuffle buffer are seeded and the interleave keeps order.
    Shuffled reading takes one record from every shard in turn (the shards of all slides are open at once), so even
    a short shuffle buffer (`shuffle_buffer` examples, see `buffer_examples`) yields batches mixed across slides.
    """
    import tensorflow as tf

    files = shard_files(manifest_paths, size)
    if not files:
        raise RecordsError(f"no {size}px records in {list(map(str, manifest_paths))}: every slide had zero patches")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        # A small read buffer per shard: hundreds of shards are open at once when shuffling.
        lambda f: tf.data.TFRecordDataset(f, buffer_size=64 * 1024),
        # Unshuffled reading keeps record order (calibration and tests rely on it).
        cycle_length=len(files) if shuffle else 1,
        block_length=1,
        num_parallel_calls=min(len(files), 16) if shuffle else None,
        deterministic=True,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(lambda s: parse_example(s, size, with_meta), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
