"""Training throughput of the do2020 temporal model: feature cache against a recomputed CNN.

The STAT + LSTM model of Do et al. (ABAW 2020, `affectkit.recipes.do2020_stat_temporal`,
its `paper` preset, default Table I model 6) trains on windows of s frames. Two ways to
feed it, timed here at equal batch size, window, head, losses and optimizer:

    cache      the face model ran once per frame (`affectkit.features`); each step
               gathers its windows of cached features from the resident matrix
               (`window_dataset`, class-balanced, shuffled) and trains the head only
    recompute  every step runs the frozen face model over the s frames of every window (the
               authors' `TimeDistributed` layout), then trains the same head; the frames are
               already decoded in memory, which favours this path

Both run in turns (`--rounds`) after a warm-up; the table gives the median windows/s and
the ratio. The load average is printed too: other processes on the machine slow both
paths. A third line gives the face model's forward speed alone, the one-time cost of the
cache (frames/s of extraction, without decoding).

Default sizes are the paper's (about 2 minutes on 2 CPU cores): 224x224 input, the full
VGGFace2 ResNet-50 (2048-d feature), LSTM 1024 units, s = 16, batch 16. At 112x112
(Aff-Wild2's `cropped_aligned` size) the CNN costs a quarter as much, and so does the
saving.

Usage:
    python tools/bench_temporal.py
    python tools/bench_temporal.py --image-size 112 --steps 8
    python tools/bench_temporal.py --image-size 64 --batch-size 8 --steps 4
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
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from affectkit import presets  # noqa: E402
from affectkit.data.affwild2 import FrameIndex, frame_columns  # noqa: E402
from affectkit.data.sequences import window_dataset  # noqa: E402
from affectkit.recipes.do2020_stat_temporal import (StatTemporalRecipe,  # noqa: E402
                                                    add_va_vector_label, get_variant)
from affectkit.training.multitask_model import MultiTaskModel  # noqa: E402
from affectkit.training.optimizers import build_optimizer  # noqa: E402

RECIPE = "do2020_stat_temporal"
STAGE = "temporal"  # the do2020 recipe's one training stage (phase b)


class RecomputedWindows(keras.Model):
    """The frozen face model over every frame of each window, then the temporal head.

    Input `(B, s, H, W, 3)` RGB in [0, 1]; the head gets the window's probabilities
    `(B, s, C)` and the current (last) frame's feature `(B, D)`, as from the cache.
    """

    def __init__(self, face, head, window, **kwargs):
        super().__init__(**kwargs)
        self.face = face
        self.head = head
        self.window = int(window)

    def call(self, frames, training=False):
        flat = ops.reshape(frames, (-1,) + tuple(frames.shape[2:]))
        outputs = self.face(flat, training=False)
        probabilities = ops.reshape(outputs["probabilities"],
                                    (-1, self.window, outputs["probabilities"].shape[-1]))
        features = ops.reshape(outputs["feature"], (-1, self.window, outputs["feature"].shape[-1]))
        return self.head({"feature": features[:, -1], "probabilities": probabilities},
                         training=training)


def synthetic_index(schema, videos, frames, seed):
    """A `FrameIndex` of `videos` x `frames` labelled frames, all with an image."""
    rng = np.random.default_rng(seed)
    n = videos * frames
    table = {
        "video": np.repeat([f"bench_{v:03d}" for v in range(videos)], frames),
        "frame": np.tile(np.arange(1, frames + 1), videos),
        "valence": rng.uniform(-1, 1, n).astype(np.float32),
        "arousal": rng.uniform(-1, 1, n).astype(np.float32),
        "expr": rng.integers(0, schema.num_expressions, n),
    }
    for au in schema.aus:
        table[au] = rng.integers(0, 2, n)
    table.update(image_aligned="", image_cropped="", has_image=True, image_frame=table["frame"],
                 has_image_cropped=True, image_frame_cropped=table["frame"])
    return FrameIndex(pd.DataFrame(table)[frame_columns(schema)], schema)


def training_model(network, recipe):
    """`network` with the recipe's losses, eq. 4 loss weights and optimizer (its temporal
    stage)."""
    stage = recipe.config["stages"][STAGE]
    model = MultiTaskModel(network, recipe.build_losses(STAGE, None),
                           loss_weights=stage["loss_weights"])
    model.compile(optimizer=build_optimizer(stage["optimizer"]))
    return model


def timed_fit(model, dataset, steps):
    """Seconds of `steps` training steps (the train function is already traced)."""
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224,
                        help="face model input (default 224, the paper's)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step (both paths)")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps of the recompute path per round; the cache path "
                             "runs 10x as many (at least 20)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each path, in turns")
    parser.add_argument("--window", type=int, default=16, help="frames per window, s")
    parser.add_argument("--variant", default="emotion_va_frame_lstm",
                        help="a STAT + LSTM variant of Table I (5 or 6)")
    parser.add_argument("--lstm-layers", type=int, default=1, choices=(1, 2))
    args = parser.parse_args(argv)

    try:
        variant = get_variant(args.variant)
    except ValueError as error:
        parser.error(f"--variant: {error}")
    if not variant.lstm:
        parser.error(f"--variant {args.variant}: expected a STAT + LSTM variant (5 or 6).")
    image_size, window, batch = args.image_size, args.window, args.batch_size
    # The paper preset with the window s (the recipe's variant sets the class axis of
    # `probabilities` to the schema's) and a face model trained whole, then frozen here.
    config = presets.resolve(RECIPE, "paper", sets=[
        f"variant={variant.number}", f"face.image_size={image_size}", "face.trainable_from=null",
        f"model.feature_inputs.probabilities=[{window},7]",
        f"model.temporal.lstm_layers={args.lstm_layers}"])
    recipe = StatTemporalRecipe(config, None, "unused", preset="paper")
    schema, model_config = recipe.schema, recipe.model_config
    temporal, stage = model_config["temporal"], recipe.config["stages"][STAGE]
    cache_steps = max(20, 10 * args.steps)

    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"model {variant.number} ({recipe.config['variant']}): face model VGGFace2 ResNet-50, "
          f"depths (3, 4, 6, 3), widths (256, 512, 1024, 2048), input {image_size}x{image_size}, "
          f"frozen; STAT + {temporal['lstm_layers']} BiLSTM layer(s) of {temporal['lstm_units']} "
          f"units; heads {tuple(model_config['heads']['expr']['hidden_units'])}; window s = "
          f"{window}; batch {batch} windows; {stage['optimizer']['name']} "
          f"(lr {stage['optimizer']['learning_rate']:g}); loss weights {stage['loss_weights']}")

    keras.utils.set_random_seed(0)
    face = recipe.build_face_model()
    face.trainable = False
    feature_dim = face.output["feature"].shape[-1]
    rng = np.random.default_rng(0)

    # Cache path: windows of a synthetic cache, through the recipe's input pipeline (its
    # windows and inputs, class-balanced targets, the va_vector label).
    index = synthetic_index(schema, videos=8, frames=250, seed=0)
    logits = rng.normal(size=(len(index), schema.num_expressions))
    probabilities = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    features = rng.normal(size=(len(index), feature_dim)).astype(np.float32)
    cache_window, windowed = recipe.window_inputs()
    cache_ds = window_dataset(index, {"feature": features, "probabilities": probabilities},
                              tasks=recipe.tasks, window=cache_window, windowed=windowed,
                              batch_size=batch, training=True,
                              balance=recipe.config["data"]["balance"], drop_remainder=True,
                              repeat=True)
    if variant.va:
        cache_ds = cache_ds.map(add_va_vector_label)
    cached = training_model(recipe.build_model(), recipe)

    # Recompute path: the same labels, frames decoded in memory.
    frames = rng.uniform(0, 1, size=(batch, window, image_size, image_size, 3)).astype(np.float32)
    _, labels = next(iter(cache_ds))
    recompute_ds = tf.data.Dataset.from_tensors((frames, labels)).repeat()
    recomputed = training_model(RecomputedWindows(face, recipe.build_model(), window), recipe)

    print("warming up (tracing both train steps) ...", flush=True)
    timed_fit(cached, cache_ds, 3)
    timed_fit(recomputed, recompute_ds, 1)
    rates = {"cache": [], "recompute": []}
    for round_ in range(args.rounds):
        seconds = timed_fit(cached, cache_ds, cache_steps)
        rates["cache"].append(cache_steps * batch / seconds)
        seconds = timed_fit(recomputed, recompute_ds, args.steps)
        rates["recompute"].append(args.steps * batch / seconds)
        print(f"  round {round_ + 1}: cache {rates['cache'][-1]:.1f} windows/s, recompute "
              f"{rates['recompute'][-1]:.2f} windows/s", flush=True)

    forward = tf.function(lambda x: face(x, training=False))
    flat = tf.constant(frames.reshape((-1, image_size, image_size, 3)))
    forward(flat)
    start = time.perf_counter()
    forward(flat)
    extraction = len(flat) / (time.perf_counter() - start)

    cache_rate = statistics.median(rates["cache"])
    recompute_rate = statistics.median(rates["recompute"])
    print(f"\nTraining throughput, model {variant.number}, s = {window}, batch {batch} "
          f"(median of {args.rounds} rounds):")
    print(f"  {'from the feature cache':<44s} {cache_rate:10.1f} windows/s "
          f"({cache_steps} steps per round)")
    print(f"  {'recomputing the frozen CNN for every window':<44s} {recompute_rate:10.2f} windows/s "
          f"({args.steps} steps per round, {batch * window} frames per step)")
    print(f"  {'ratio':<44s} {cache_rate / recompute_rate:10.1f}x (target >= 10x)")
    print(f"  {'face model forward (one-time cache cost)':<44s} {extraction:10.1f} frames/s "
          f"(batch {len(flat)}, decoding not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
