"""Aff-Wild2 at full size on one machine: the FrameIndex of the train split, windows over it,
read from a memory-mapped feature cache, each with its time and memory.

The annotation folders are generated at Aff-Wild2's size (ABAW3 per-task layout, train
split: 2.04 M frames over 360 videos by default, VA on every video, EXPR on 250, AU on 300;
no images), since Aff-Wild2 itself is licence-restricted. Each measurement runs in a fresh
process, so its peak RSS (`ru_maxrss` of that process, minus the RSS after imports) is its
own. Shard throughput against loose JPEGs is `tools/bench_shards.py`.

    python tools/bench_scale.py                       # full size (about 2 min)
    python tools/bench_scale.py --frames 200000       # smaller
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN_FRAMES = 2_040_000
TARGETS = {"frameindex_seconds": 15.0, "frameindex_mib": 600.0}


def write_annotation_folders(root, frames=TRAIN_FRAMES, videos=360, expr_videos=250,
                             au_videos=300, edition="abaw3", seed=0):
    """ABAW3-layout train annotation folders (VA, EXPR, AU) of `frames` frames in all.

    Video lengths vary (0.5x to 1.5x the mean); VA covers every video, EXPR the first
    `expr_videos`, AU a window of `au_videos`; each task's files cover the whole video.
    Labels are random with the missing markers at 2% of the lines. Returns the root."""
    from affectkit.data.affwild2 import annotation_header, split_dir_name, task_dir_names
    from affectkit.labels import get_schema

    schema = get_schema(edition)
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(0.5, 1.5, videos)
    lengths = np.maximum(1, np.round(lengths / lengths.sum() * frames)).astype(np.int64)
    lengths[-1] += frames - lengths.sum()
    names = [f"{i}-{rng.integers(20, 60)}-1280x720" for i in range(videos)]
    tasks = {"va": range(videos), "expr": range(expr_videos),
             "au": range(videos - au_videos, videos)}
    split = split_dir_name(schema, "train")
    for task, chosen in tasks.items():
        folder = os.path.join(root, task_dir_names(schema, task)[0], split)
        os.makedirs(folder, exist_ok=True)
        header = annotation_header(task, schema)
        for i in chosen:
            n = int(lengths[i])
            missing = rng.random(n) < 0.02
            if task == "va":
                values = np.round(rng.uniform(-1, 1, (n, 2)), 3)
                values[missing] = -5
                body = "\n".join(f"{v},{a}" for v, a in values.tolist())
            elif task == "expr":
                values = rng.integers(0, schema.num_expressions, n)
                values[missing] = -1
                body = "\n".join(map(str, values.tolist()))
            else:
                bits = rng.integers(0, 2, (n, schema.num_aus)).astype(np.uint8) + ord("0")
                rows = np.full((n, 2 * schema.num_aus), ord(","), np.uint8)
                rows[:, 0::2] = bits
                rows[:, -1] = ord("\n")
                body = rows.tobytes().decode()[:-1]
                lines = body.split("\n")
                for j in np.flatnonzero(missing).tolist():
                    lines[j] = ",".join(["-1"] * schema.num_aus)
                body = "\n".join(lines)
            with open(os.path.join(folder, names[i] + ".txt"), "w") as f:
                f.write(header + "\n" + body + "\n")
    return root


# --------------------------------------------------------------------- measured in a child

def _rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_frameindex(root):
    from affectkit.data.affwild2 import FrameIndex

    base = _rss_mib()
    start = time.perf_counter()
    index = FrameIndex.from_affwild2(root, "abaw3", "train")
    seconds = time.perf_counter() - start
    held = _rss_mib() - base
    return {"frames": len(index), "videos": len(index.videos), "seconds": seconds,
            "peak_mib": _peak_mib() - base, "held_mib": held,
            "bytes_per_frame": held * 2**20 / len(index),
            "frames_memory_mib": index.frames.memory_usage(deep=True).sum() / 2**20}


def write_feature_cache(root, out, feature_dim=2048, seed=0):
    """A do2020-like cache of every train frame: a `feature_dim` float16 feature and 7
    probabilities per frame (random), as `extract_features` lays it out."""
    from affectkit.data.affwild2 import FrameIndex
    from affectkit.features.cache import CacheWriter

    index = FrameIndex.from_affwild2(root, "abaw3", "train")
    writer = CacheWriter(out, {"modality": "visual", "model": {"name": "random"},
                               "image_size": [112, 112], "view": "aligned",
                               "normalization": "unit"}, dtype="float16")
    rng = np.random.default_rng(seed)
    frames = index.frames
    for video, rows in frames.groupby("video", sort=True).indices.items():
        if writer.done(video):
            continue
        n = len(rows)
        logits = rng.standard_normal((n, 7), np.float32)
        writer.write(video, frames["frame"].to_numpy()[rows],
                     {"feature": rng.standard_normal((n, feature_dim), np.float32),
                      "probabilities": np.exp(logits) / np.exp(logits).sum(1, keepdims=True)})
    return out


def _memory_mib():
    """`(anonymous, file-backed)` resident MiB of this process now."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("RssAnon", 0.0), values.get("RssFile", 0.0)


def _measure_windows(root, window=32, batches=300, batch_size=256):
    """do2020's windows over every train frame, read from the memory-mapped cache: the
    dataset's build time, windows per second, and the memory it holds."""
    import tensorflow as tf  # noqa: F401

    from affectkit.data.affwild2 import FrameIndex
    from affectkit.data.sequences import window_dataset
    from affectkit.features.cache import FeatureCache

    index = FrameIndex.from_affwild2(root, "abaw3", "train")
    # The folders hold no images; the cache stands for every frame's.
    index.frames["has_image"] = True
    index.frames["image_frame"] = index.frames["frame"].to_numpy(np.int32)
    cache = FeatureCache(os.path.join(root, "cache"))
    size = sum(os.path.getsize(cache.video_path(v)) for v in cache.videos) / 2**30
    base, _ = _memory_mib()
    start = time.perf_counter()
    dataset = window_dataset(index, {"probabilities": (cache, ["probabilities"]),
                                     "feature": (cache, ["feature"])}, tasks=("expr",),
                             window=window, windowed=("probabilities",),
                             batch_size=batch_size, training=True, mapped=True)
    built = time.perf_counter() - start
    start = time.perf_counter()
    for x, _ in dataset.take(batches):
        pass
    seconds = time.perf_counter() - start
    anon, mapped = _memory_mib()
    return {"frames": len(index), "window": window, "cache_gib": size,
            "resident_gib": len(index) * (2048 + 7) * 4 / 2**30,
            "build_seconds": built, "windows_per_second": batches * batch_size / seconds,
            "anon_mib": anon - base, "file_mib": mapped, "peak_mib": _peak_mib()}


MEASURES = {"frameindex": _measure_frameindex, "windows": _measure_windows}


def measure(name, root):
    """Runs one measurement in a fresh process; returns its dict."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--root", root]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=TRAIN_FRAMES)
    parser.add_argument("--videos", type=int, default=360)
    parser.add_argument("--root", help="annotation folders to reuse (written when absent)")
    parser.add_argument("--only", choices=sorted(MEASURES), action="append")
    parser.add_argument("--child", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(MEASURES[args.child](args.root)))
        return 0
    with tempfile.TemporaryDirectory(prefix="affectkit_scale_") as scratch:
        root = args.root or os.path.join(scratch, "affwild2")
        if not os.path.isdir(root):
            start = time.perf_counter()
            scale = args.frames / TRAIN_FRAMES
            write_annotation_folders(root, args.frames, args.videos,
                                     max(1, round(args.videos * 250 / 360)),
                                     max(1, round(args.videos * 300 / 360)))
            print(f"annotation folders: {args.frames} frames, {args.videos} videos "
                  f"(scale {scale:.3f}), written in {time.perf_counter() - start:.1f} s")
        if "windows" in (args.only or MEASURES) and not os.path.isdir(os.path.join(root,
                                                                                 "cache")):
            start = time.perf_counter()
            write_feature_cache(root, os.path.join(root, "cache"))
            print(f"feature cache (2048 + 7 per frame, float16) written in "
                  f"{time.perf_counter() - start:.1f} s")
        results = {name: measure(name, root) for name in (args.only or sorted(MEASURES))}
    if "frameindex" in results:
        r = results["frameindex"]
        print(f"FrameIndex (train, {r['frames']} frames, {r['videos']} videos): "
              f"{r['seconds']:.2f} s (target {TARGETS['frameindex_seconds']:.0f} s), peak "
              f"{r['peak_mib']:.0f} MiB (target {TARGETS['frameindex_mib']:.0f} MiB), "
              f"held {r['held_mib']:.0f} MiB = {r['bytes_per_frame']:.0f} bytes/frame "
              f"(DataFrame {r['frames_memory_mib']:.0f} MiB)")
    if "windows" in results:
        r = results["windows"]
        print(f"windows of {r['window']} over {r['frames']} frames from a {r['cache_gib']:.1f} "
              f"GiB cache ({r['resident_gib']:.1f} GiB as a float32 matrix), memory-mapped: "
              f"built in {r['build_seconds']:.1f} s, {r['windows_per_second']:.0f} windows/s; "
              f"after reading, {r['anon_mib']:.0f} MiB of own memory beyond the index and "
              f"{r['file_mib']:.0f} MiB of mapped file pages (page cache the kernel reclaims); "
              f"peak RSS {r['peak_mib']:.0f} MiB")
    return results


if __name__ == "__main__":
    out = main()
    sys.exit(out if isinstance(out, int) else 0)
