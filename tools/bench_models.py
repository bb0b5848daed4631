"""One training step's throughput of the image recipes at the papers' input sizes.

Times full training steps (forward, masked losses, backward, optimizer update) of

    haider2022  InceptionV3 to `mixed7` at 299x299 + RegionAttention (17 regions) + token
                transformer + VA/EXPR/AU heads, the paper's three losses, SGD
    phan2022    RegNetY-1.6GF at 112x112 over a 64-frame sequence + self-attention +
                pre-norm transformer encoder + Dense(8) per frame, focal loss, AdamW

each compiled three ways, on random inputs and labels (the input pipeline is not timed):

    eager       `run_eagerly=True`: op by op, no graph
    graph       `jit_compile=False`: a traced `tf.function` (the Keras default on TensorFlow)
    xla         `jit_compile=True`: the step compiled by XLA

The table gives images/s (median over rounds, after a warm-up step that traces and
compiles) and the ratios to the graph step. Weights are random (`weights=None`); speed
does not depend on them.

Usage:
    python tools/bench_models.py                         # both recipes, paper sizes
    python tools/bench_models.py --recipes phan2022 --phan-sequences 1 --steps 2
    python tools/bench_models.py --image-scale 0.5       # quicker, smaller inputs
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.training.multitask_model import MultiTaskModel  # noqa: E402

MODES = {"eager": dict(run_eagerly=True), "graph": dict(jit_compile=False),
         "xla": dict(jit_compile=True)}


def haider2022(schema, batch, scale, rng):
    """(network, losses, loss_weights, optimizer factory, inputs, labels, images per step)."""
    from recipes import haider2022_mtl_ensemble as recipe

    config = dict(recipe.PRESETS["paper"])
    config["image_size"] = int(round(config["image_size"] * scale))
    network = recipe.build_model(config, schema)
    size = config["image_size"]
    x = rng.uniform(0, 1, (batch, size, size, 3)).astype("float32")
    y = {"va": rng.uniform(-1, 1, (batch, 2)).astype("float32"),
         "expr": rng.integers(0, schema.num_expressions, batch),
         "au": rng.integers(0, 2, (batch, schema.num_aus))}
    weights = affect_losses.resolve_loss_weights(
        dict(config, au_pos_weights="auto", expr_class_weights="auto"), y, schema)

    return (network, recipe.build_losses(**weights), recipe.LOSS_WEIGHTS,
            lambda: recipe.build_optimizer(config), x, y,
            batch, f"{size}x{size}, batch {batch} images")


def phan2022(schema, sequences, scale, rng):
    from recipes import phan2022_regnet_transformer as recipe

    config = dict(recipe.PRESETS["paper"])
    config["image_size"] = int(round(config["image_size"] * scale))
    network = recipe.build_model(config, schema)
    size, length = config["image_size"], config["sequence_length"]
    x = rng.uniform(0, 1, (sequences, length, size, size, 3)).astype("float32")
    y = {"expr": rng.integers(0, schema.num_expressions, (sequences, length))}
    return (network, recipe.build_losses(config), None, lambda: recipe.build_optimizer(config),
            x, y, sequences * length,
            f"{size}x{size}, batch {sequences} sequence(s) x {length} frames")


def time_steps(model, x, y, steps):
    """Seconds per step over `steps` steps of an already traced train function."""
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["haider2022", "phan2022"],
                        choices=["haider2022", "phan2022"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--haider-batch", type=int, default=8, help="images per step (paper: 24)")
    parser.add_argument("--phan-sequences", type=int, default=1,
                        help="64-frame sequences per step (paper: 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="scale the papers' input sizes (1.0: 299 and 112)")
    args = parser.parse_args(argv)

    schema = get_schema("abaw3")
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"devices {devices}, load average {os.getloadavg()[0]:.1f} at start")
    builders = {"haider2022": lambda rng: haider2022(schema, args.haider_batch, args.image_scale, rng),
                "phan2022": lambda rng: phan2022(schema, args.phan_sequences, args.image_scale, rng)}
    rows = []
    for name in args.recipes:
        rates = {}
        for mode in args.modes:
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            network, losses, loss_weights, optimizer, x, y, images, shape = builders[name](
                np.random.default_rng(0))
            model = MultiTaskModel(network, losses, loss_weights=loss_weights)
            model.compile(optimizer=optimizer(), **MODES[mode])
            start = time.perf_counter()
            time_steps(model, x, y, 1)  # trace, compile and run once
            warmup = time.perf_counter() - start
            per_step = [time_steps(model, x, y, args.steps) for _ in range(args.rounds)]
            rates[mode] = images / statistics.median(per_step)
            print(f"  {name} {mode:<5s}: {rates[mode]:8.2f} images/s "
                  f"(first step incl. tracing {warmup:.1f} s)", flush=True)
        rows.append((name, shape, network.count_params(), rates))

    print(f"\nOne training step, images/s (median of {args.rounds} rounds x {args.steps} steps):")
    print(f"  {'recipe':<11s} {'input':<42s} {'params':>11s} "
          + " ".join(f"{m:>8s}" for m in args.modes)
          + ("   xla/graph  eager/graph" if {"xla", "graph", "eager"} <= set(args.modes) else ""))
    for name, shape, params, rates in rows:
        line = (f"  {name:<11s} {shape:<42s} {params:>11,d} "
                + " ".join(f"{rates[m]:8.2f}" for m in args.modes))
        if {"xla", "graph", "eager"} <= set(rates):
            line += f"   {rates['xla'] / rates['graph']:9.2f}  {rates['eager'] / rates['graph']:11.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
