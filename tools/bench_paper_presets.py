"""Training-step throughput of the five recipes' `paper` networks at full size, fp32 or
mixed_float16, XLA off or on: a GPU benchmark (it runs on CPU too, and says so).

Networks, each built by its recipe (`affectkit.recipes`) from the `paper` preset
(`affectkit.presets.resolve(name, "paper")`), with random weights (nothing is downloaded
or read; speed does not depend on the weights):

    zhang2020         SE-ResNet-50 at 112x112 + avg/max neck + VA/EXPR/AU heads; stage 1
                      (the plain sum of the masked losses), Adam; batch 32 images
    do2020_face       phase (a): the face model, VGGFace2 ResNet-50 at 224x224 + softmax,
                      frozen before conv4_1 as in the paper, masked cross-entropy, Adam;
                      batch 32 images
    do2020_temporal   phase (b): STAT + BiLSTM 1024 over windows of 16 frames' cached class
                      probabilities + the target frame's 2048-d feature, eq. 4, Adam;
                      batch 32 windows
    haider2022        InceptionV3 to mixed7 at 299x299 + RegionAttention (17 regions) + token
                      transformer + VA/EXPR/AU heads, the paper's weighted losses, SGD;
                      batch 24 images
    phan2022          RegNetY-1.6GF at 112x112 on every frame of 64-frame clips (the layers
                      the preset freezes frozen) + attention + transformer + Dense(8) per
                      frame, the preset's focal loss, AdamW; batch 16 clips
    liu2023           segments of 128 frames of 3670-d cached features, projection to 1024
                      + 4-layer transformer + MLP per frame, R-Drop (two passes), Adam;
                      batch 16 segments

The presets name the pretrained checkpoints the papers fine-tune; here every network has
random weights (`weights=None`), with the layers its preset freezes frozen all the same.

A step is one training step of the project's own path, as `Trainer.run_stage` runs it:
the recipe's training model (`Recipe.training_model`) in `MultiTaskModel` with the
recipe's losses (`Recipe.build_losses`, fed synthetic training labels with the datasets'
missing markers) and the first stage's loss weights and optimizer, compiled with
`jit_compile`, under the precision policy that `Trainer.from_config` sets from the run
config (`run.mixed_precision`, `run.jit_compile`), trained by `Model.fit`. The batch is
synthetic and in memory (the input pipeline is not timed): the paper's batch size and
input shapes, labels with some frames marked missing (-5, -1); its copy to the device is
part of each step, as in training. The loss is read back after every step (the
trainer's `TerminateOnNaN` does the same), which times each step separately: warm-up
steps (the first one traces and compiles) are excluded, and the table gives the median
of the timed steps. One device: the first GPU (the others are hidden from the workers),
else the CPU, where the workers switch oneDNN on (`worker_environment`).

Settings, each measured in a fresh process (precision policies and XLA state would leak
from one to the next otherwise):

    fp32            float32, the traced graph (`jit_compile=False`): the reference row
    fp32_xla        float32, the step compiled by XLA (`jit_compile=True`)
    mixed_fp16      `mixed_float16` (heads in float32, loss scaling), no XLA
    mixed_fp16_xla  `mixed_float16` and XLA

What frames/s counts: every frame that enters the step. An image is one frame; a clip
(phan2022) counts its 64 frames; a window of cached features (do2020_temporal) its 16
frames; a segment (liu2023) its 128 frames. labelled/s counts the frames that get a
prediction and a loss: every frame for images, clips and segments, the one target frame
of a window. The ratio is frames/s over that of the same network's fp32 row.

A setting that fails (out of memory, an op XLA cannot compile, ...) prints its error in
its row and the others go on. Exit status: 0, or 1 when every row failed.

Usage:
    python tools/bench_paper_presets.py                          # all, 4 settings each
    python tools/bench_paper_presets.py --recipes phan2022 --settings fp32 mixed_fp16_xla
    python tools/bench_paper_presets.py --steps 50 --warmup 10 --out bench.json
    python tools/bench_paper_presets.py --tiny --recipes zhang2020 --settings fp32  # smoke
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
# The lines a worker process reports on (its stdout): its machine, then its row.
MACHINE_PREFIX = "BENCH_PAPER_PRESETS_MACHINE "
RESULT_PREFIX = "BENCH_PAPER_PRESETS_ROW "

# Setting -> (mixed precision, XLA).
SETTINGS = {
    "fp32": (False, False),
    "fp32_xla": (False, True),
    "mixed_fp16": (True, False),
    "mixed_fp16_xla": (True, True),
}
REFERENCE = "fp32"
# Benchmarked network -> (recipe, which of its networks).
NETWORKS = {
    "zhang2020": ("zhang2020_mtanet", "model"),
    "do2020_face": ("do2020_stat_temporal", "face"),
    "do2020_temporal": ("do2020_stat_temporal", "model"),
    "haider2022": ("haider2022_mtl_ensemble", "model"),
    "phan2022": ("phan2022_regnet_transformer", "model"),
    "liu2023": ("liu2023_multimodal_ensemble", "model"),
}
# What `--tiny` changes: the recipes' `cpu_demo` presets (small widths and inputs), batches
# of 2, and a couple of steps.
TINY = {"preset": "cpu_demo", "batch_size": 2, "steps": 2, "warmup": 1}
DEFAULT_STEPS, DEFAULT_WARMUP = 20, 5
# Share of synthetic label frames marked missing, per task.
MISSING_SHARE = 0.1


# ------------------------------------------------------------------------------- worker


def _synthetic_labels(shapes, rng):
    """Labels of `shapes` (task -> label shape) with the datasets' markers: `va` in
    [-1, 1] (a share of frames -5 in both dimensions), `expr` class indices (a share -1),
    `au` 0/1 (a share of frames -1 for every AU), `va_vector` as do2020 labels it (`va`)."""
    from affectkit.labels import AU_MISSING, EXPR_MISSING, VA_MISSING

    y = {}
    for task, (shape, classes) in shapes.items():
        if task == "va":
            labels = rng.uniform(-1, 1, shape).astype("float32")
            labels[rng.random(shape[:-1]) < MISSING_SHARE] = VA_MISSING
        elif task == "expr":
            labels = rng.integers(0, classes, shape).astype("int32")
            labels[rng.random(shape) < MISSING_SHARE] = EXPR_MISSING
        elif task == "au":
            labels = rng.integers(0, 2, shape).astype("float32")
            labels[rng.random(shape[:-1]) < MISSING_SHARE] = AU_MISSING
        else:
            continue
        y[task] = labels
    if "va_vector" in shapes and "va" in y:
        y["va_vector"] = y["va"]  # `add_va_vector_label`: VAVectorMSE builds the 5-vector
    return y


def _label_shapes(network, leading):
    """task -> (label shape, classes) of a network's outputs, the `None` axes of its outputs
    (batch, time) filled from `leading`."""
    shapes = {}
    for task, tensor in network.output.items():
        dims = list(tensor.shape)
        dims[:len(leading)] = [d if d is not None else n for d, n in zip(dims, leading)]
        if task == "expr":
            shapes[task] = (tuple(dims[:-1]), int(dims[-1]))
        else:
            shapes[task] = (tuple(dims), None)
    return shapes


def _frame_label_shapes(network, frames):
    """task -> (label shape, classes) of `frames` per-frame training labels (as
    `Recipe.train_labels` gives them: `(frames,)` or `(frames, dims)`, whatever the input)."""
    return {task: ((frames,), int(tensor.shape[-1])) if task == "expr"
            else ((frames, int(tensor.shape[-1])), None)
            for task, tensor in network.output.items()}


def _face_setup(recipe, config, batch_size):
    """do2020 phase (a): the face model as `StatTemporalRecipe.train_face_model` trains it
    (an `expr` output of the softmax), its loss, optimizer spec and batch size."""
    import keras

    from affectkit import losses
    from affectkit.models.backbones.resnet_vggface2 import do2020_face_model

    face = config["face"]
    size = int(face["image_size"])
    # The recipe refuses to freeze the layers of a random backbone (they would not learn);
    # the paper's step is that of the frozen trunk, so it is built as such here.
    model = recipe.check_face_model(
        do2020_face_model(input_shape=(size, size, 3), num_classes=recipe.schema.num_expressions,
                          weights=None, trainable_from=face["trainable_from"],
                          **(face.get("backbone") or {})),
        "face.backbone")
    network = keras.Model(model.input, {"expr": model.get_layer("probabilities").output},
                          name="do2020_face_training")
    return dict(network=network, kind="images", trained=network, tasks=("expr",),
                losses={"expr": losses.MaskedCategoricalCrossentropy()},
                optimizer=face["optimizer"], loss_weights=None, uncertainty=False,
                batch=int(batch_size or face["batch_size"]), length=None)


def _model_setup(recipe, config, batch_size, rng):
    """A recipe's network (its first stage): the training model, losses from synthetic
    training labels, the stage's optimizer spec and loss weights."""
    if recipe.model_config.get("normalization") == "standardize":
        # The recipe adapts its standardisation to the training features of datasets().
        width = next(iter(recipe.model_config["feature_inputs"].values()))[-1]
        recipe.train_features = rng.normal(size=(256, width)).astype("float32")
    network = recipe.build_model()
    recipe.adapt_model(network)
    trained = recipe.training_model(network)
    stage, settings = next(iter(config["stages"].items()))
    # Per-frame training labels, as `Recipe.train_labels` gives them (the class and AU
    # weights of haider2022 are computed from them).
    train_labels = _synthetic_labels(_frame_label_shapes(network, 4096), rng)
    return dict(network=network, kind=network.input_kind, trained=trained, tasks=recipe.tasks,
                stage=stage,
                losses=recipe.build_losses(stage, train_labels),
                optimizer=settings["optimizer"], loss_weights=settings.get("loss_weights"),
                uncertainty=settings.get("uncertainty", False),
                batch=int(batch_size or config["data"]["batch_size"]),
                length=config["data"].get("segment_length"))


def _counts(network, kind, x, batch):
    """(frames, labelled frames, unit, input description) of one step."""
    if kind == "images":
        return batch, batch, "images", f"{x.shape[1]}x{x.shape[2]}, {batch} images"
    if kind == "clips":
        length = x.shape[1]
        return (batch * length, batch * length, "clip frames",
                f"{x.shape[2]}x{x.shape[3]}, {batch} clips x {length} frames")
    shapes = {name: x[name].shape[1:] for name in network.feature_inputs}
    text = " + ".join("x".join(str(d) for d in shape) for shape in shapes.values())
    windowed = [shape[0] for name, shape in network.feature_inputs.items()
                if len(shape) == 2 and shape[0] is not None]
    if windowed:  # windows: the target frame and its s - 1 previous frames
        window = int(windowed[0])
        return (batch * window, batch, "window frames",
                f"features {text}, {batch} windows of {window}")
    length = next(iter(x.values())).shape[1]
    return (batch * length, batch * length, "segment frames",
            f"features {text}, {batch} segments x {length}")


def _step_timer():
    """A Keras callback that times each training step, from its start to its loss read
    back (the loss arrives as a Python float: Keras reads it back for a callback with
    per-batch hooks, which is what makes each step's time its own)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._start = None

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def _device_in_use():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


def measure(network_name, setting, preset, batch_size, steps, warmup):
    """One network in one setting, in this process: returns the row (a dict)."""
    import keras
    import tensorflow as tf

    from affectkit import presets
    from affectkit.recipes import get_recipe
    from affectkit.training.multitask_model import MultiTaskModel
    from affectkit.training.optimizers import build_optimizer
    from affectkit.training.trainer import Trainer

    mixed, xla = SETTINGS[setting]
    recipe_name, which = NETWORKS[network_name]
    config = presets.resolve(recipe_name, preset)
    config["run"] = dict(config["run"], mixed_precision=mixed, jit_compile=xla)
    # Random weights (the presets name the pretrained checkpoints the papers fine-tune, as
    # local files); the layers the paper freezes stay frozen, which is what its step costs.
    config["weights"] = None
    if "face" in config:
        config["face"]["weights"] = None
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_paper_presets_") as run_dir:
        recipe = get_recipe(recipe_name)(config, None, run_dir, preset=preset)
        tasks = ("expr",) if which == "face" else recipe.tasks
        # The trainer sets the precision policy and picks the strategy, as in Recipe.run.
        trainer = Trainer.from_config(run_dir, recipe.schema, tasks, config["run"])
        with trainer.strategy.scope():
            setup = (_face_setup(recipe, config, batch_size) if which == "face"
                     else _model_setup(recipe, config, batch_size, rng))
            model = MultiTaskModel(setup["trained"], setup["losses"],
                                   loss_weights=setup["loss_weights"],
                                   uncertainty=setup["uncertainty"], name="bench_training")
            model.compile(optimizer=build_optimizer(setup["optimizer"]),
                          jit_compile=trainer.jit_compile)
            model.build()
    network, kind, batch = setup["network"], setup["kind"], setup["batch"]
    from bench_models import random_inputs  # tools/, on the path of this script

    x = random_inputs(network, batch, setup["length"], rng, kind=kind)
    y = _synthetic_labels(_label_shapes(network, (batch, setup["length"])), rng)
    y = {task: y[task] for task in setup["losses"]}
    frames, labelled, unit, description = _counts(network, kind, x, batch)

    timer = _step_timer()
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer],
              shuffle=False, verbose=0)
    timed = timer.seconds[warmup:]
    step = statistics.median(timed)
    row = {
        "network": network_name, "recipe": recipe_name, "setting": setting, "preset": preset,
        "input": description, "unit": unit, "batch": batch,
        "frames_per_step": frames, "labelled_per_step": labelled,
        "step_ms": 1000 * step, "frames_per_s": frames / step,
        "labelled_per_s": labelled / step,
        "first_step_s": timer.seconds[0], "step_ms_all": [1000 * s for s in timed],
        "warmup": warmup, "steps": steps,
        "params": int(network.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in network.trainable_weights)),
        "policy": keras.mixed_precision.global_policy().name,
        "optimizer": type(model.optimizer).__name__,
        "jit_compile": bool(model.jit_compile), "device": _device_in_use(),
    }
    if setup.get("stage"):
        row["stage"] = setup["stage"]
    if row["device"] != "CPU":
        row["peak_memory_gb"] = tf.config.experimental.get_memory_info(
            row["device"].replace("/device:", ""))["peak"] / 2**30
    return row


def _worker(args):
    network_name, setting = args.worker
    header, machine = device_summary()
    print(MACHINE_PREFIX + json.dumps(dict(machine, header=header)), flush=True)
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) > 1:  # one device: the trainer would mirror over them all
            tf.config.set_visible_devices(gpus[:1], "GPU")
        row = measure(network_name, setting, args.preset, args.batch_size, args.steps,
                      args.warmup)
    except Exception as error:  # reported in the row; the parent goes on
        import traceback

        traceback.print_exc()
        row = {"network": network_name, "setting": setting, "preset": args.preset,
               "error": f"{type(error).__name__}: {error}"[:4000]}
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0


def device_summary():
    """(header text, machine dict): the devices TensorFlow sees (without starting a GPU
    context), the CPU, and the TensorFlow, CUDA and Keras versions."""
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append({"name": gpu.name, "device_name": details.get("device_name", "GPU"),
                     "compute_capability": ".".join(map(str, capability)) if capability else None})
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    build = tf.sysconfig.get_build_info()
    machine = {"gpus": gpus, "cpu": cpu, "cpu_count": os.cpu_count(),
               "tensorflow": tf.__version__, "keras": keras.__version__,
               "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
               "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default")}
    if gpus:
        names = ", ".join(f"{g['device_name']} (compute capability {g['compute_capability']})"
                          for g in gpus)
        where = f"GPU: {names}; the steps run on the first (one device)"
    else:
        where = f"no GPU: running on CPU ({cpu}, {os.cpu_count()} cores)"
    text = (f"{where}; TensorFlow {tf.__version__} (built for CUDA {machine['cuda'] or '-'}, "
            f"cuDNN {machine['cudnn'] or '-'}), Keras {keras.__version__}")
    return text, machine


# ------------------------------------------------------------------------------- parent


NO_GPU_NOTE = (
    "bench_paper_presets: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
    "is empty), so this runs on the CPU and its figures are CPU figures. On a GPU "
    "machine, check that `nvidia-smi` works and that TensorFlow finds CUDA (e.g. "
    "`pip install 'tensorflow[and-cuda]'` in the venv for the pip CUDA libraries).")
ONEDNN_NOTE = (
    "CPU: oneDNN on (TF_ENABLE_ONEDNN_OPTS=1: TensorFlow leaves it off on CPUs without "
    "AVX-512, and its own CPU kernels have no gradient of a grouped convolution, which "
    "RegNet needs; set TF_ENABLE_ONEDNN_OPTS yourself to choose)")


def worker_environment():
    """The environment of the worker processes. Without an NVIDIA driver, oneDNN is
    switched on unless `TF_ENABLE_ONEDNN_OPTS` is set: TensorFlow leaves it off on CPUs
    without AVX-512 (e.g. this project's 2-core AMD EPYC), and its own kernels then refuse
    the gradient of a grouped convolution ("Gradients for grouped convolutions are not
    supported on CPU"), which phan2022's RegNet needs. With a GPU, TensorFlow's defaults."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    nvidia = os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")
    if not nvidia and "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return env


def _run_worker(network_name, setting, args, env, on_machine):
    """Runs one setting in a fresh process; `on_machine(machine)` gets the worker's
    machine report as soon as it has imported TensorFlow. Returns the row."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", network_name, setting,
               "--preset", args.preset, "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    start = time.perf_counter()
    row, timed_out = None, threading.Event()
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env=env)
        timer = threading.Timer(args.timeout, lambda: (timed_out.set(), process.kill()))
        timer.start()
        try:
            for line in process.stdout:
                if line.startswith(MACHINE_PREFIX):
                    on_machine(json.loads(line[len(MACHINE_PREFIX):]))
                elif line.startswith(RESULT_PREFIX):
                    row = json.loads(line[len(RESULT_PREFIX):])
            process.wait()
        finally:
            timer.cancel()
        stderr.seek(0)
        log = stderr.read()
    if timed_out.is_set():
        row = {"network": network_name, "setting": setting,
               "error": f"timed out after {args.timeout:g} s (--timeout)"}
    elif row is None:  # killed (e.g. out of host memory) or crashed before reporting
        tail = [line for line in log.splitlines() if line.strip()]
        row = {"network": network_name, "setting": setting,
               "error": f"the worker exited with status {process.returncode} without a "
                        "result: " + (" | ".join(tail[-3:]) if tail else "no output")}
    if "error" in row:
        row["log_tail"] = log[-3000:]
    row["wall_s"] = time.perf_counter() - start
    return row


def _one_line(text, width=100):
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[:width - 3] + "..."


def format_table(rows):
    """The table of results: one row per network and setting."""
    reference = {row["network"]: row["frames_per_s"] for row in rows
                 if row.get("setting") == REFERENCE and "error" not in row}
    lines = [f"  {'network':<16s} {'input':<40s} {'setting':<15s} {'step ms':>9s} "
             f"{'frames/s':>10s} {'labelled/s':>10s} {'vs fp32':>7s} {'1st step s':>10s}"]
    described = {row["network"]: row["input"] for row in rows if "input" in row}
    for row in rows:
        name, setting = row["network"], row["setting"]
        start = f"  {name:<16s} {described.get(name, '-'):<40s} {setting:<15s} "
        if "error" in row:
            lines.append(start + "error: " + _one_line(row["error"]))
            continue
        base = reference.get(name)
        ratio = f"{row['frames_per_s'] / base:7.2f}" if base else f"{'-':>7s}"
        note = ""
        if SETTINGS[setting][1] and not row["jit_compile"]:
            note = "  (Keras turned XLA off for this model)"
        lines.append(start + f"{row['step_ms']:9.1f} {row['frames_per_s']:10.1f} "
                     f"{row['labelled_per_s']:10.1f} {ratio} {row['first_step_s']:10.1f}"
                     + note)
    return "\n".join(lines)


def _select(names):
    """Benchmarked networks of `--recipes` names (short or full recipe names, or networks
    of `NETWORKS`), in `NETWORKS` order."""
    chosen = set()
    for name in names:
        matches = [key for key, (recipe, _) in NETWORKS.items()
                   if name in (key, recipe, recipe.split("_")[0])]
        if not matches:
            raise SystemExit(f"bench_paper_presets: unknown recipe {name!r}; expected one of "
                             f"{', '.join(sorted(_recipe_names()))}.")
        chosen.update(matches)
    return [key for key in NETWORKS if key in chosen]


def _recipe_names():
    names = set(NETWORKS)
    for recipe, _ in NETWORKS.values():
        names.update((recipe, recipe.split("_")[0]))
    return names


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Networks: " + ", ".join(NETWORKS) + " (do2020 is both of its networks). "
               "Settings: " + ", ".join(SETTINGS) + f" (ratios are to {REFERENCE}).")
    parser.add_argument("--recipes", nargs="+", default=list(NETWORKS), metavar="NAME",
                        help="recipes or networks: short names (zhang2020, do2020, ...), full "
                             "recipe names, or do2020_face / do2020_temporal (default: all)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps (default {DEFAULT_STEPS}; --tiny {TINY['steps']})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps first, the first traces and compiles (default "
                             f"{DEFAULT_WARMUP}; --tiny {TINY['warmup']})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="items per step for every network: images, clips, windows or "
                             "segments (default: the paper's; --tiny 2)")
    parser.add_argument("--tiny", action="store_true",
                        help="the recipes' cpu_demo presets (small widths and inputs), batch 2, "
                             "a couple of steps: a CPU smoke run, not a benchmark")
    parser.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one setting may take (default 1800)")
    parser.add_argument("--worker", nargs=2, metavar=("NETWORK", "SETTING"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.tiny:
        args.preset = TINY["preset"]
        args.batch_size = args.batch_size or TINY["batch_size"]
    if args.steps is None:
        args.steps = TINY["steps"] if args.tiny else DEFAULT_STEPS
    if args.warmup is None:
        args.warmup = TINY["warmup"] if args.tiny else DEFAULT_WARMUP
    if args.steps < 1 or args.warmup < 1:
        raise SystemExit("bench_paper_presets: --steps and --warmup must be at least 1 (the "
                         "first step traces and compiles and is never timed).")
    networks = _select(args.recipes)

    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv), flush=True)
    env = worker_environment()
    onednn_switched_on = ("TF_ENABLE_ONEDNN_OPTS" in env
                          and "TF_ENABLE_ONEDNN_OPTS" not in os.environ)
    report = {}

    def on_machine(machine):  # the header, from the first worker's report
        if report:
            return
        report["header"], report["machine"] = machine.pop("header"), machine
        print(report["header"])
        if not machine["gpus"]:
            print(NO_GPU_NOTE, flush=True)
            if onednn_switched_on:
                print(ONEDNN_NOTE)
        sizes = ("cpu_demo presets (--tiny: not the papers' sizes)" if args.tiny
                 else "the papers' presets at full size")
        batches = f"batch {args.batch_size} for all" if args.batch_size else "the papers' batches"
        print(f"{sizes}, {batches}; {args.warmup} warm-up + {args.steps} timed steps per "
              f"setting, each in a fresh process; load average {os.getloadavg()[0]:.1f} at "
              "start", flush=True)

    rows = []
    for name in networks:
        for setting in args.settings:
            row = _run_worker(name, setting, args, env, on_machine)
            rows.append(row)
            if "error" in row:
                print(f"  {name} {setting}: error: {_one_line(row['error'], 200)}", flush=True)
            else:
                memory = (f", peak {row['peak_memory_gb']:.1f} GiB"
                          if "peak_memory_gb" in row else "")
                print(f"  {name} {setting}: {row['step_ms']:.1f} ms/step, "
                      f"{row['frames_per_s']:.1f} frames/s ({row['unit']}; first step "
                      f"{row['first_step_s']:.1f} s, {row['device']}, {row['policy']}, "
                      f"{row['optimizer']}{memory})", flush=True)
    if not report:  # no worker got as far as importing TensorFlow
        header, machine = device_summary()
        on_machine(dict(machine, header=header))
    device = report["machine"]

    print(f"\nOne training step, median of {args.steps} timed steps; frames/s counts every "
          f"frame entering the step, labelled/s the frames with a loss; vs fp32: frames/s "
          f"over the same network's fp32 row; load average {os.getloadavg()[0]:.1f} at the end")
    print(format_table(rows))
    units = {row["network"]: row["unit"] for row in rows if "unit" in row}
    if units:
        print("  frames are: " + "; ".join(f"{name} {unit}" for name, unit in units.items()))
    if not device["gpus"]:
        print("  (CPU run: no GPU found)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": sys.argv, "device": device, "header": report["header"],
                       "preset": args.preset, "steps": args.steps, "warmup": args.warmup,
                       "rows": rows}, f, indent=2)
        print(f"results written to {args.out}")
    return 1 if rows and all("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
