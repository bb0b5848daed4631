"""Frames per second of TFRecord shards (`shard_dataset`) against loose JPEGs (`frame_dataset`).

Both read the same frames of one split with the same settings; rows of the table:

    loose eval     affectkit.data.pipeline.frame_dataset, unshuffled: one JPEG file per frame
    shards eval    affectkit.data.shards.shard_dataset over shards of the same frames
    loose train    frame_dataset, shuffled (seeded, full buffer), no augmentation
    shards train   shard_dataset, shuffled files, interleaved, shuffled records (buffer)

Methods are timed in turns (one epoch each, `--epochs` rounds) after a warm-up epoch, so
load from other processes hits them alike; the table shows the median, slowest and fastest
epoch, and the CPU time of this process per frame (all threads), which other load disturbs
less. After the warm-up every file is in the page cache: the loose JPEGs' cost of opening
one file per frame is measured, not a cold disk's seeks (where shards gain most).

Usage:
    python tools/bench_shards.py                    # demo data, 8 videos x 500 frames, 112 px
    python tools/bench_shards.py --data /data/affwild2 --edition abaw3 --split train
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from affectkit.data import pipeline  # noqa: E402
from affectkit.data.shards import shard_dataset, split_index, write_shards  # noqa: E402

ROWS = ("loose eval", "shards eval", "loose train", "shards train")


def _epoch(dataset):
    """`(frames, wall seconds, CPU seconds of this process)` of one pass over `dataset`."""
    frames = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for images, _ in dataset:
        frames += int(images.shape[0])
    return frames, time.perf_counter() - wall, time.process_time() - cpu


def shard_throughput(root, edition="abaw3", split="train", batch_size=64, image_size=112,
                     epochs=5, shards=None, view="aligned", out=None):
    """Times `shard_dataset` and `frame_dataset` over the same frames of a split.

    Args:
        root: Aff-Wild2 folder (e.g. from `write_demo_dataset`).
        edition, split, view: the split to read (MTL file where there is one).
        batch_size, image_size: of both datasets (`"imagenet"` normalisation).
        epochs: timed epochs per row, in turns, after one warm-up epoch each.
        shards: shard files (None: `write_shards`' default).
        out: folder for the shards (default: a temporary folder, deleted).

    Returns:
        dict: `frames`, `shards`, `shard_mb`, `jpeg_mb` (the loose files), `write_s`,
        `rows` (per row: `frames_per_s` median, `slowest`, `fastest`, `cpu_ms_per_frame`
        median), `ratio` (`eval`, `train`: shards / loose frames per second, medians),
        `load` (1-minute load average before and after).
    """
    load_before = os.getloadavg()[0]
    index = split_index(root, edition, split)
    temporary = out is None
    out = tempfile.mkdtemp(prefix="affectkit_bench_shards_") if temporary else out
    try:
        start = time.perf_counter()
        metadata = write_shards(index, out, shards=shards, view=view,
                                       split=split, overwrite=True)
        write_s = time.perf_counter() - start
        paths = index.image_paths(view, np.flatnonzero(pipeline._row_mask(index, "skip", view)))
        common = dict(batch_size=batch_size, image_size=image_size, normalization="imagenet")
        datasets = {
            "loose eval": pipeline.frame_dataset(index, view=view, **common),
            "shards eval": shard_dataset(out, **common),
            "loose train": pipeline.frame_dataset(index, view=view, training=True, **common),
            "shards train": shard_dataset(out, training=True, **common),
        }
        for dataset in datasets.values():  # warm-up: graphs traced, files cached
            _epoch(dataset)
        timings = {name: [] for name in datasets}
        for _ in range(epochs):
            for name, dataset in datasets.items():
                timings[name].append(_epoch(dataset))
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    rows = {}
    for name, runs in timings.items():
        rates = [frames / wall for frames, wall, _ in runs]
        rows[name] = {"frames_per_s": statistics.median(rates), "slowest": min(rates),
                      "fastest": max(rates),
                      "cpu_ms_per_frame": statistics.median(1e3 * cpu / frames
                                                            for frames, _, cpu in runs)}
    ratio = {kind: rows[f"shards {kind}"]["frames_per_s"] / rows[f"loose {kind}"]["frames_per_s"]
             for kind in ("eval", "train")}
    cpu_ratio = {kind: rows[f"loose {kind}"]["cpu_ms_per_frame"]
                 / rows[f"shards {kind}"]["cpu_ms_per_frame"] for kind in ("eval", "train")}
    return {
        "frames": metadata["frames"],
        "shards": len(metadata["shards"]),
        "shard_mb": sum(s["bytes"] for s in metadata["shards"]) / 1e6,
        "jpeg_mb": sum(os.path.getsize(p) for p in paths) / 1e6,
        "write_s": write_s,
        "rows": rows,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "load": (load_before, os.getloadavg()[0]),
    }


def format_table(result):
    lines = [f"{'':14}{'frames/s':>10}{'slowest':>10}{'fastest':>10}{'CPU ms/frame':>14}"
             f"{'speed vs loose':>16}{'CPU vs loose':>14}"]
    for name in ROWS:
        row = result["rows"][name]
        kind = name.split()[1]
        shard = name.startswith("shards")
        ratio = f"{result['ratio'][kind]:.2f}x" if shard else ""
        cpu = f"{1 / result['cpu_ratio'][kind]:.2f}x" if shard else ""
        lines.append(f"{name:14}{row['frames_per_s']:>10,.0f}{row['slowest']:>10,.0f}"
                     f"{row['fastest']:>10,.0f}{row['cpu_ms_per_frame']:>14.3f}{ratio:>16}"
                     f"{cpu:>14}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="Aff-Wild2 root (default: generated demo data)")
    parser.add_argument("--edition", default="abaw3")
    parser.add_argument("--split", default="train")
    parser.add_argument("--view", default="aligned", choices=("aligned", "cropped"))
    parser.add_argument("--videos", type=int, default=8, help="demo videos (both splits)")
    parser.add_argument("--frames", type=int, default=500, help="demo frames per video")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=7, help="timed epochs per row")
    parser.add_argument("--shards", type=int, default=None,
                        help="shard files (default: write_shards' choice)")
    args = parser.parse_args(argv)

    tmp = None
    root = args.data
    if root is None:
        from affectkit.data.synthetic import write_demo_dataset

        tmp = tempfile.TemporaryDirectory(prefix="affectkit_bench_shards_demo_")
        root = os.path.join(tmp.name, "data")
        start = time.perf_counter()
        write_demo_dataset(root, edition=args.edition, videos=args.videos, frames=args.frames,
                           seed=0, image_size=args.image_size, write_videos=False)
        source = (f"demo data, {args.videos} videos x {args.frames} frames, "
                  f"{args.image_size} px (written in {time.perf_counter() - start:.1f} s)")
    else:
        source = f"{root} ({args.edition})"
    try:
        result = shard_throughput(root, args.edition, args.split, args.batch_size,
                                  args.image_size, args.epochs, args.shards, args.view)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"{source}: {args.split} split, {args.view} view, {result['frames']} frames, "
          f"batch {args.batch_size}, {args.image_size} px, {os.cpu_count()} CPUs")
    print(f"shards: {result['shards']} files, {result['shard_mb']:.1f} MB "
          f"(loose JPEGs {result['jpeg_mb']:.1f} MB), written in {result['write_s']:.2f} s "
          f"({result['frames'] / result['write_s']:,.0f} frames/s)")
    print(f"median of {args.epochs} epochs per row, in turns; load average "
          f"{result['load'][0]:.2f} before, {result['load'][1]:.2f} after")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
