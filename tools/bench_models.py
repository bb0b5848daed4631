"""One training step's throughput of the recipes' `paper` presets at the papers' input sizes.

Times full training steps (forward, masked losses, backward, optimizer update) of

    haider2022  InceptionV3 to `mixed7` at 299x299 + RegionAttention (17 regions) + token
                transformer + VA/EXPR/AU heads, the paper's three losses, SGD
    phan2022    RegNetY-1.6GF at 112x112 over a 64-frame sequence + self-attention +
                pre-norm transformer encoder + Dense(8) per frame, focal loss, AdamW
    zhang2020   SE-ResNet-50 at 112x112 + avg/max neck + VA/EXPR/AU heads, stage 1 (the
                plain sum of the masked losses), Adam
    do2020      the temporal model (phase b) on windows of cached features: STAT + BiLSTM
                1024 over 16 frames' probabilities + the 2048-d frame feature, eq. 4, Adam
    liu2023     segments of 128 frames of 3670-d cached features: linear projection to 1024
                + 4-layer transformer + MLP per frame, R-Drop (two passes), Adam

each built by its recipe (`affectkit.recipes`: the preset's `AffectModel`, the recipe's
losses and training-time wrapper, the first stage's optimizer and loss weights) and
compiled three ways, on random inputs and labels (the input pipeline is not timed):

    eager       `run_eagerly=True`: op by op, no graph
    graph       `jit_compile=False`: a traced `tf.function` (the Keras default on TensorFlow)
    xla         `jit_compile=True`: the step compiled by XLA

The table gives frames/s, the labelled frames trained per second (images, clip or segment
frames, windows' target frames; median over rounds, after a warm-up step that traces and
compiles), and the ratios to the graph step. Weights are random (`weights=None`); speed
does not depend on them.

Usage:
    python tools/bench_models.py                         # haider2022 and phan2022, paper sizes
    python tools/bench_models.py --recipes phan2022 --phan-sequences 1 --steps 2
    python tools/bench_models.py --image-scale 0.5       # quicker, smaller inputs
    python tools/bench_models.py --recipes zhang2020 do2020 liu2023 haider2022 phan2022
"""

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from affectkit import presets  # noqa: E402
from affectkit.recipes import get_recipe  # noqa: E402
from affectkit.training.multitask_model import MultiTaskModel  # noqa: E402
from affectkit.training.optimizers import build_optimizer  # noqa: E402

MODES = {"eager": dict(run_eagerly=True), "graph": dict(jit_compile=False),
         "xla": dict(jit_compile=True)}
# Short name (the recipe name up to its first "_") -> recipe name.
RECIPES = {name.split("_")[0]: name for name in presets.RECIPES}
# Short name -> (flag, default, what one batch item is, help): batches smaller than the
# papers' to fit 2 CPU cores.
BATCHES = {
    "zhang2020": ("--zhang-batch", 16, "images", "images per step (paper: 32)"),
    "do2020": ("--do-batch", 32, "windows", "windows per step (paper: 32)"),
    "liu2023": ("--liu-segments", 2, "segments", "128-frame segments per step (paper: 16)"),
    "haider2022": ("--haider-batch", 8, "images", "images per step (paper: 24)"),
    "phan2022": ("--phan-sequences", 1, "sequences", "64-frame sequences per step (paper: 16)"),
}


def random_inputs(network, batch, length, rng, kind=None):
    """Random inputs of `network` (`AffectModel`, or any model of input `kind`): images and
    clips RGB in [0, 1], features standard normal, `valid` all True; a `None` time axis has
    `length` frames."""
    kind = kind or network.input_kind
    specs = network.input if isinstance(network.input, dict) else {None: network.input}
    x = {}
    for name, spec in specs.items():
        shape = (batch,) + tuple(length if d is None else d for d in spec.shape[1:])
        if spec.dtype == "bool":
            x[name] = np.ones(shape, bool)
        elif kind == "features":
            x[name] = rng.normal(size=shape).astype("float32")
        else:
            x[name] = rng.uniform(0, 1, shape).astype("float32")
    return x[None] if None in x else x


def random_labels(network, x, rng):
    """Random labels of every task output, shaped as the network's outputs on `x` (one per
    frame: `(B,)` or `(B, T)`): `va` in [-1, 1], `expr` class indices, `au` 0/1, and
    `va_vector` as its recipe labels it (from `va`)."""
    outputs = network(x, training=False)
    y = {}
    for task in ("va", "expr", "au"):
        if task in outputs:
            shape = tuple(outputs[task].shape)
            if task == "va":
                y[task] = rng.uniform(-1, 1, shape).astype("float32")
            elif task == "expr":
                y[task] = rng.integers(0, shape[-1], shape[:-1]).astype("int32")
            else:
                y[task] = rng.integers(0, 2, shape).astype("float32")
    if "va_vector" in outputs:
        from affectkit.recipes.do2020_stat_temporal import add_va_vector_label

        _, y = add_va_vector_label(x, y)
    return y


class Setup(NamedTuple):
    """One recipe's training step: the network, its training model (not compiled), a
    factory of fresh optimizers, one batch, and what the batch holds."""

    network: keras.Model
    model: keras.Model
    optimizer: Callable
    x: object
    y: dict
    frames: int
    description: str


def training_setup(short, batch, scale, rng):
    """The `Setup` of a recipe's paper preset (its first stage), `batch` items per step, the
    input size scaled by `scale` (images and clips)."""
    name = RECIPES[short]
    preset = presets.model_preset(name)
    sets = [f"data.batch_size={batch}"]
    if preset["input_kind"] != "features":
        sets.append(f"model.image_size={int(round(preset['image_size'] * scale))}")
    config = presets.resolve(name, "paper", sets=sets)
    recipe = get_recipe(name)(config, None, "unused", preset="paper")
    if recipe.model_config.get("normalization") == "standardize":
        # The recipe adapts the standardisation to the training features of its datasets().
        width = next(iter(recipe.model_config["feature_inputs"].values()))[-1]
        recipe.train_features = rng.normal(size=(256, width)).astype("float32")
    network = recipe.build_model()
    recipe.adapt_model(network)
    x = random_inputs(network, batch, config["data"].get("segment_length"), rng)
    y = random_labels(network, x, rng)
    stage, settings = next(iter(config["stages"].items()))
    model = MultiTaskModel(recipe.training_model(network), recipe.build_losses(stage, y),
                           loss_weights=settings.get("loss_weights"),
                           uncertainty=settings.get("uncertainty", False))
    return Setup(network, model, lambda: build_optimizer(settings["optimizer"]), x, y,
                 frames=int(np.prod(y["expr"].shape)), description=describe(short, network, x))


def describe(short, network, x):
    """The input of one step, e.g. `299x299, batch 8 images`."""
    size = network.image_size
    if network.input_kind == "images":
        return f"{size}x{size}, batch {len(x)} images"
    if network.input_kind == "clips":
        return f"{size}x{size}, batch {x.shape[0]} sequence(s) x {x.shape[1]} frames"
    shapes = " + ".join("x".join(str(d) for d in x[name].shape[1:])
                        for name in network.feature_inputs)
    return f"features {shapes}, batch {len(next(iter(x.values())))} {BATCHES[short][2]}"


def time_steps(model, x, y, steps):
    """Seconds per step over `steps` steps of an already traced train function."""
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["haider2022", "phan2022"],
                        choices=list(RECIPES) + list(RECIPES.values()),
                        help="recipes (short or full names; default haider2022 phan2022)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    for short, (flag, default, _, text) in BATCHES.items():
        parser.add_argument(flag, dest=f"batch_{short}", type=int, default=default, help=text)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="scale the papers' input sizes (1.0: 299 and 112; features "
                             "recipes keep theirs)")
    args = parser.parse_args(argv)

    short_names = {full: short for short, full in RECIPES.items()}
    selected = [short_names.get(name, name) for name in args.recipes]
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"devices {devices}, load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for short in selected:
        rates = {}
        for mode in args.modes:
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            setup = training_setup(short, getattr(args, f"batch_{short}"), args.image_scale,
                                   np.random.default_rng(0))
            setup.model.compile(optimizer=setup.optimizer(), **MODES[mode])
            start = time.perf_counter()
            time_steps(setup.model, setup.x, setup.y, 1)  # trace, compile and run once
            warmup = time.perf_counter() - start
            per_step = [time_steps(setup.model, setup.x, setup.y, args.steps)
                        for _ in range(args.rounds)]
            rates[mode] = setup.frames / statistics.median(per_step)
            print(f"  {short} {mode:<5s}: {rates[mode]:8.2f} frames/s "
                  f"(first step incl. tracing {warmup:.1f} s)", flush=True)
        rows.append((short, setup.description, setup.network.count_params(), rates))

    print(f"\nOne training step, frames/s (median of {args.rounds} rounds x {args.steps} steps):")
    print(f"  {'recipe':<11s} {'input':<42s} {'params':>11s} "
          + " ".join(f"{m:>8s}" for m in args.modes)
          + ("   xla/graph  eager/graph" if {"xla", "graph", "eager"} <= set(args.modes) else ""))
    for short, description, params, rates in rows:
        line = (f"  {short:<11s} {description:<42s} {params:>11,d} "
                + " ".join(f"{rates[m]:8.2f}" for m in args.modes))
        if {"xla", "graph", "eager"} <= set(rates):
            line += f"   {rates['xla'] / rates['graph']:9.2f}  {rates['eager'] / rates['graph']:11.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
