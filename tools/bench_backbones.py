"""Backbone training step: affectkit (Keras 3 / TensorFlow) vs its PyTorch counterpart.

Times the same full training step on both sides, for every backbone family, and prints them
side by side with the ratio affectkit / PyTorch:

    affectkit              PyTorch
    regnety_1.6gf          torchvision regnet_y_1_6gf
    resnet50               torchvision resnet50
    resnext50              torchvision resnext50_32x4d
    resnext50_cbam         torchvision resnext50_32x4d (the same network without CBAM)
    senet50                timm legacy_seresnet50 (affectkit built with `stride_in_1x1=True`,
                           the Caffe layout of that model)

A step is: forward pass of the whole network with its 1000-class classifier (logits), softmax
cross-entropy, backward pass, SGD update (learning rate 0.01, momentum 0.9); BatchNorm in
training mode. Both sides get the same random input (channels last for Keras, channels first
for PyTorch, each framework's default layout) and labels, the same batch, and 2 threads
(TensorFlow intra- and inter-op pools, `torch.set_num_threads`). Keras runs the traced graph
(`jit_compile=False`, its default on TensorFlow). Every measurement runs in a fresh worker
process, so the two frameworks never share a process or thread pool; the parent alternates
affectkit and PyTorch family by family. Warm-up steps (tracing, first allocations) are
excluded; each worker times `--rounds` rounds of `--steps` steps and reports the median round.

Needs the `bench` extra (`pip install -e .[bench]`: torch, torchvision, timm). Weights are
random: speed does not depend on them, and nothing is downloaded.

Usage:
    python tools/bench_backbones.py                               # 112x112, batch 16
    python tools/bench_backbones.py --families resnext50 --steps 3
    python tools/bench_backbones.py --image-size 32 --batch-size 2 --warmup-steps 1 \\
        --steps 1 --rounds 1 --families resnet50                   # smoke run

Exit status: 0, or 1 when a ratio is below `--target` (0.9).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# affectkit backbone (with build overrides) -> its PyTorch counterpart.
FAMILIES = {
    "regnety_1.6gf": {"overrides": {}, "torch": ("torchvision", "regnet_y_1_6gf")},
    "resnet50": {"overrides": {}, "torch": ("torchvision", "resnet50")},
    "resnext50": {"overrides": {}, "torch": ("torchvision", "resnext50_32x4d")},
    "resnext50_cbam": {"overrides": {}, "torch": ("torchvision", "resnext50_32x4d")},
    "senet50": {"overrides": {"stride_in_1x1": True}, "torch": ("timm", "legacy_seresnet50")},
}
NUM_CLASSES = 1000
THREADS = 2
INSTALL_HINT = "pip install -e .[bench]   (torch, torchvision, timm)"


# ------------------------------------------------------------------------------- workers


def _keras_worker(family, size, batch, warmup, steps, rounds):
    """Images/s of each round of affectkit's training step (runs in its own process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    import keras
    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    from affectkit.models.backbones import build_backbone

    keras.utils.set_random_seed(0)
    model = build_backbone(family, (size, size, 3), include_top=True, num_classes=NUM_CLASSES,
                           classifier_activation=None, **FAMILIES[family]["overrides"])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(batch,)).astype("int32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()

    def run(n):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=n, shuffle=False, verbose=0)
        return time.perf_counter() - start

    run(warmup)
    rates = [batch * steps / run(steps) for _ in range(rounds)]
    return {"rates": rates, "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "version": f"TensorFlow {tf.__version__}, Keras {keras.__version__}"}


def _torch_model(library, name):
    import torch

    try:
        import timm
        import torchvision
    except Exception as error:  # e.g. a CUDA build of torchvision beside a CPU-only torch
        raise SystemExit(
            f"bench_backbones: torchvision / timm do not load with torch {torch.__version__} "
            f"({type(error).__name__}: {error}). Install builds of torch and torchvision "
            f"that match each other:\n    {INSTALL_HINT}"
        ) from error
    if library == "torchvision":
        return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


def _torch_worker(family, size, batch, warmup, steps, rounds):
    """Images/s of each round of the PyTorch counterpart's training step (own process)."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    library, name = FAMILIES[family]["torch"]
    model = _torch_model(library, name)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - start

    run(warmup)
    rates = [batch * steps / run(steps) for _ in range(rounds)]
    versions = [f"torch {torch.__version__}"]
    module = importlib.import_module(library)
    versions.append(f"{library} {module.__version__}")
    return {"rates": rates, "params": int(sum(p.numel() for p in model.parameters())),
            "version": ", ".join(versions)}


WORKERS = {"keras": _keras_worker, "torch": _torch_worker}


def _run_worker(side, family, args):
    command = [sys.executable, os.path.abspath(__file__), "--worker", side, family,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
               "--rounds", str(args.rounds)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"the {side} worker for {family} failed (exit status {result.returncode}):\n"
            + (result.stderr or result.stdout)[-3000:]
        )
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- main


def _missing_bench_packages():
    return [name for name in ("torch", "torchvision", "timm")
            if importlib.util.find_spec(name) is None]


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="untimed steps first (the first one traces the Keras graph)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per worker")
    parser.add_argument("--target", type=float, default=0.9,
                        help="lowest acceptable affectkit / PyTorch ratio")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "FAMILY"), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.worker:
        side, family = args.worker
        result = WORKERS[side](family, args.image_size, args.batch_size, args.warmup_steps,
                               args.steps, args.rounds)
        print(json.dumps(result))
        return 0

    missing = _missing_bench_packages()
    if missing:
        print(f"bench_backbones: {', '.join(missing)} not installed; the PyTorch side needs the "
              f"bench extra:\n    {INSTALL_HINT}", file=sys.stderr)
        return 2

    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, SGD, {THREADS} threads, "
          f"{args.warmup_steps} warm-up + {args.rounds} x {args.steps} timed steps per worker")
    rows, versions = [], {}  # version strings, in order of appearance
    for family in args.families:
        keras_result = _run_worker("keras", family, args)
        torch_result = _run_worker("torch", family, args)
        for result in (keras_result, torch_result):
            versions.update(dict.fromkeys(result["version"].split(", ")))
        ours, theirs = (statistics.median(r["rates"]) for r in (keras_result, torch_result))
        library, name = FAMILIES[family]["torch"]
        rows.append((family, keras_result["params"], ours, f"{library} {name}",
                     torch_result["params"], theirs))
        print(f"  {family}: affectkit {ours:.2f} img/s, {library} {name} {theirs:.2f} img/s",
              flush=True)

    print(f"\nTraining step, images/s (median of {args.rounds} rounds x {args.steps} steps); "
          f"{', '.join(versions)}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"  {'affectkit':<16s} {'params':>11s} {'img/s':>8s}   {'PyTorch':<32s} "
          f"{'params':>11s} {'img/s':>8s}   {'ratio':>5s}")
    below = []
    for family, params, ours, reference, reference_params, theirs in rows:
        ratio = ours / theirs
        if ratio < args.target:
            below.append(family)
        print(f"  {family:<16s} {params:>11,d} {ours:8.2f}   {reference:<32s} "
              f"{reference_params:>11,d} {theirs:8.2f}   {ratio:5.2f}")
    if below:
        print(f"\nbelow the target ratio {args.target}: {', '.join(below)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
