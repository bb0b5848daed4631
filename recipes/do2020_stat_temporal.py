"""do2020_stat_temporal: multi-task temporal statistical model (Do, Nguyen-Quynh & Kim, ABAW 2020).

Do et al., "Affective Expression Analysis in-the-wild using Multi-Task Temporal Statistical
Deep Learning Model" (FG 2020, ABAW1 tracks 1 and 2), in two phases:

(a) The face feature model (paper Sec. II-B): VGGFace2 ResNet-50 with a new 7-class softmax,
    frozen before `conv4_1_1x1_reduce`, fine-tuned on frames for expressions with online
    augmentation and class-balanced sampling. It gives each frame a 2048-d feature and 7
    class probabilities, which are extracted once into a feature cache.
(b) The temporal model (Sec. II-C, Fig. 2), trained on windows of the cache: the current
    frame and its previous frames, s = 16 or 32. STAT: max, min and mean of the window's
    probabilities; LSTM: 1 or 2 bidirectional LSTM layers of 1024 units (dropout 0.1) over
    them. Fusion concatenates STAT, the LSTM output, the current frame's feature and its
    probabilities. Branches of two dense layers give the expression softmax, arousal and
    valence (tanh, CCC losses) and the 5-vector [a, v, m, |a - m|, |v - m|] (tanh, MSE).
    Loss (eq. 4): 1.0 CE + 0.4 (1 - CCC_a) + 0.4 (1 - CCC_v) + 0.2 MSE.

The six models of the paper's Table I are the `--variant`s; `--fuse` averages the
validation predictions of trained variants (the paper's "Fusion" row).

    python recipes/do2020_stat_temporal.py --data DIR --out runs/do2020/m6 \\
        --variant emotion_va_frame_lstm --face-dir runs/do2020/face --weights vggface2.h5
    python recipes/do2020_stat_temporal.py --data DIR --out runs/do2020/m2 \\
        --variant emotion_va_image --face-dir runs/do2020/face
    python recipes/do2020_stat_temporal.py --out runs/do2020/fusion \\
        --fuse runs/do2020/m2 runs/do2020/m6

Variants sharing a `--face-dir` share its face model and feature cache (trained and
extracted by the first run). Differences from the paper: the paper's face model is first
fine-tuned on AffectNet and RAF-DB (give such a model with `--weights` or `--face-model`),
and its last stage is fine-tuned again together with the temporal model; here it stays
frozen in phase (b), which is what lets phase (b) run from the cache
(`tools/bench_temporal.py` measures the difference in speed). Online augmentation applies
in phase (a); phase (b) sees cached features.

The recipe is a config of hyperparameters (`PRESETS`) plus `build_model(config, schema)`
(the temporal network) and `build_face_model(config, schema)`, so a KerasTuner HyperModel
can wrap it.
"""

import argparse
import copy
import hashlib
import json
import os
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit import metrics  # noqa: E402
from affectkit.data.affwild2 import FrameIndex  # noqa: E402
from affectkit.data.features import FeatureCache, extract_features  # noqa: E402
from affectkit.data.pipeline import (  # noqa: E402
    default_augmentation,
    frame_dataset,
    frame_rows,
    label_arrays,
)
from affectkit.data.sequences import window_dataset  # noqa: E402
from affectkit.evaluation import write_scores  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.models.backbones.resnet_vggface2 import do2020_face_model  # noqa: E402
from affectkit.models.layers import StackedBiLSTM, StatPooling  # noqa: E402
from affectkit.training.trainer import Trainer, predict_arrays  # noqa: E402

RECIPE = "do2020_stat_temporal"
INDEX_TASKS = ("va", "expr")  # ABAW1 tracks 1 and 2
FACE_MODEL_FILE = "face_model.keras"
PREDICTIONS_FILE = "val_predictions.npz"


class Variant(NamedTuple):
    """One model of the paper's Table I."""

    number: int
    title: str
    stat: bool
    lstm: bool
    va: bool

    @property
    def temporal(self):
        """True when the model takes the previous frames ("Image, previous blocks")."""
        return self.stat or self.lstm

    @property
    def tasks(self):
        """The ABAW tasks the model is scored on."""
        return ("va", "expr") if self.va else ("expr",)


# Table I of the paper: models 1-6. "Frame" models have the STAT module; "with LSTM" ones
# have both STAT and LSTM modules; "VA" ones add the arousal, valence and 5-vector branches.
VARIANTS = {
    "emotion_image": Variant(1, "Emotion Image", stat=False, lstm=False, va=False),
    "emotion_va_image": Variant(2, "Emotion VA Image", stat=False, lstm=False, va=True),
    "emotion_frame": Variant(3, "Emotion Frame", stat=True, lstm=False, va=False),
    "emotion_va_frame": Variant(4, "Emotion VA Frame", stat=True, lstm=False, va=True),
    "emotion_frame_lstm": Variant(5, "Emotion Frame with LSTM", stat=True, lstm=True, va=False),
    "emotion_va_frame_lstm": Variant(6, "Emotion VA Frame with LSTM", stat=True, lstm=True,
                                     va=True),
}

PAPER = {
    "edition": "abaw1",
    "variant": "emotion_va_frame_lstm",
    # Phase (a): the face feature model (paper Sec. II-B; input 224, BGR minus mean inside).
    "image_size": 224,
    "face_config": {},  # vggface2_resnet50 sizes; {} is ResNet-50: depths (3, 4, 6, 3)
    "trainable_from": "conv4_1_1x1_reduce",
    "weights": None,  # local keras-vggface .h5 (or do2020_face_model weights) file
    "face_epochs": 5,  # not given in the paper
    "face_learning_rate": 1e-4,  # "learning rate 0.0001 for all models"
    "face_batch_size": 32,
    "augment": True,
    # Phase (b): the temporal model, on windows of the feature cache.
    "window": 16,  # s = 16 or 32
    "lstm_units": 1024,
    "lstm_layers": 1,  # 1 or 2
    "lstm_dropout": 0.1,
    "head_units": (512, 512),  # the authors' code: Dropout-Dense(512)-Dropout-Dense(512)-Dropout
    "head_dropout": 0.1,
    "epochs": 10,  # not given in the paper
    "learning_rate": 1e-4,
    "batch_size": 32,
    "balance": True,  # class-balanced sampling of the target frames
    "expr_weight": 1.0,  # w1 of eq. 4
    "ccc_weight": 0.4,  # w2 = w3: arousal CCC and valence CCC
    "mse_weight": 0.2,  # w4: 5-vector MSE
    "extract_batch_size": 64,
    "seed": 0,
    # Paths (None: derived from the run directory).
    "face_dir": None,  # phase (a) run directory, shared by variants; default <out>/face
    "face_model": None,  # a trained face feature model file; skips phase (a)
    "cache": None,  # feature cache folder; default <face_dir>/cache
}

PRESETS = {
    "paper": PAPER,
    # Trains from scratch on the default demo data (`affectkit demo-data --edition abaw1`)
    # in about a minute on 2 CPU cores. Without pretrained weights every layer of the tiny
    # face model is trained.
    "cpu_demo": dict(
        PAPER,
        image_size=64,
        face_config={"depths": (1, 1, 1, 1), "stem_width": 16, "widths": (32, 64, 128, 256)},
        trainable_from=None,
        face_epochs=8,
        face_learning_rate=1e-3,
        lstm_units=64,
        head_units=(64, 64),
        epochs=8,
        learning_rate=1e-3,
        batch_size=32,
    ),
}


def get_variant(name):
    """The `Variant` of a name of `VARIANTS` or a Table I model number (1-6)."""
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower()
    if key.isdigit():
        numbers = {v.number: k for k, v in VARIANTS.items()}
        key = numbers.get(int(key), key)
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown variant {name!r}: expected one of {', '.join(VARIANTS)} or a Table I "
            "model number 1-6."
        )
    return VARIANTS[key]


def variant_name(variant):
    """The `VARIANTS` key of a variant (name, number or `Variant`)."""
    variant = get_variant(variant)
    return next(k for k, v in VARIANTS.items() if v == variant)


def feature_dim(config):
    """Width of the face model's feature: `config["feature_dim"]`, else its last stage."""
    if config.get("feature_dim"):
        return int(config["feature_dim"])
    return int(tuple(config["face_config"].get("widths", (256, 512, 1024, 2048)))[-1])


def window_size(config):
    """Frames per window: `config["window"]` for STAT/LSTM variants, 1 for image-only ones."""
    return int(config["window"]) if get_variant(config["variant"]).temporal else 1


# ----------------------------------------------------------------------------- models


def build_face_model(config, schema):
    """The face feature model of phase (a): `{"feature", "probabilities"}` per frame."""
    size = int(config["image_size"])
    return do2020_face_model(
        input_shape=(size, size, 3),
        num_classes=get_schema(schema).num_expressions,
        weights=config.get("weights"),
        trainable_from=config["trainable_from"],
        **config["face_config"],
    )


def _branch(x, name, units, dropout, outputs, activation):
    """Dropout-Dense(relu) per entry of `units`, Dropout, then the output Dense `name`
    (the classification and regression branches of Do et al. 2020, Sec. II-C)."""
    for i, width in enumerate(units, start=1):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout_{i}")(x)
        x = keras.layers.Dense(int(width), activation="relu", name=f"{name}_dense_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout_{len(units) + 1}")(x)
    return keras.layers.Dense(outputs, activation=activation, dtype="float32", name=name)(x)


def build_model(config, schema):
    """The temporal network of a config's variant (Do et al. 2020, Fig. 2).

    Inputs (a dict, as `window_dataset` yields them from the feature cache):
        `feature` `(B, D)`: the current frame's face feature (D = 2048 in the paper);
        `probabilities` `(B, s, C)`: the class probabilities of the window's frames, oldest
        first, the current frame last (s = 1 for the image-only variants).
    Outputs: `expr` `(B, C)` softmax; VA variants add `va` `(B, 2)` (valence, arousal, each
    its own tanh unit) and `va_vector` `(B, 5)` tanh ([a, v, m, |a - m|, |v - m|]).
    """
    schema = get_schema(schema)
    variant = get_variant(config["variant"])
    window = window_size(config)
    classes = schema.num_expressions
    units = tuple(config["head_units"])
    dropout = float(config["head_dropout"])

    # Functional graph.
    feature = keras.Input((feature_dim(config),), name="feature")
    probabilities = keras.Input((window, classes), name="probabilities")
    current = keras.layers.Cropping1D((window - 1, 0), name="current_frame")(probabilities)
    current = keras.layers.Reshape((classes,), name="current_probabilities")(current)
    parts = []
    if variant.stat:
        parts.append(StatPooling(name="stat")(probabilities))
    if variant.lstm:
        parts.append(StackedBiLSTM(units=config["lstm_units"], num_layers=config["lstm_layers"],
                                   dropout=config["lstm_dropout"], name="lstm")(probabilities))
    fused = keras.layers.Concatenate(name="fusion")(parts + [feature, current])
    outputs = {"expr": _branch(fused, "expr", units, dropout, classes, "softmax")}
    if variant.va:
        arousal = _branch(fused, "arousal", units, dropout, 1, "tanh")
        valence = _branch(fused, "valence", units, dropout, 1, "tanh")
        outputs["va"] = keras.layers.Concatenate(dtype="float32", name="va")([valence, arousal])
        outputs["va_vector"] = _branch(fused, "va_vector", units, dropout, 5, "tanh")
    return keras.Model({"feature": feature, "probabilities": probabilities}, outputs,
                       name=f"do2020_{variant_name(variant)}")


def build_losses(config):
    """The masked losses of the config's variant, keyed by output (paper eqs. 1-3)."""
    losses = {"expr": affect_losses.MaskedCategoricalCrossentropy()}
    if get_variant(config["variant"]).va:
        losses["va"] = affect_losses.MaskedCCCLoss()
        losses["va_vector"] = affect_losses.VAVectorMSE()
    return losses


def build_loss_weights(config):
    """Weights of eq. 4 for `build_losses`' keys.

    `MaskedCCCLoss` on `va` is ((1 - CCC_v) + (1 - CCC_a)) / 2, so its weight is
    2 * ccc_weight: w2 (1 - CCC_a) + w3 (1 - CCC_v) with w2 = w3 = ccc_weight.
    """
    weights = {"expr": float(config["expr_weight"])}
    if get_variant(config["variant"]).va:
        weights["va"] = 2.0 * float(config["ccc_weight"])
        weights["va_vector"] = float(config["mse_weight"])
    return weights


# ----------------------------------------------------------------------------- data


def balanced_expression_index(index, seed):
    """Frames for phase (a), drawn so every expression class is equally frequent.

    The paper's "balance emotion sampling": of the frames with an expression label and an
    image, as many are drawn (with replacement, seeded) as there are, each class with equal
    probability. Returns a `FrameIndex` of the drawn rows.
    """
    frames = index.frames
    keep = (frames["expr"].to_numpy() >= 0) & frames["has_image"].to_numpy(bool)
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise ValueError(
            f"{index.root}: no training frame has both an expression label and an image; "
            "phase (a) trains the face model on such frames."
        )
    labels = frames["expr"].to_numpy()[rows]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    probability = 1.0 / (len(counts) * counts[inverse])
    draws = np.random.default_rng(seed).choice(rows, size=len(rows), replace=True,
                                               p=probability / probability.sum())
    return FrameIndex(frames.iloc[np.sort(draws)].reset_index(drop=True), index.schema,
                      index.root)


def window_datasets(config, cache, train_index, val_index):
    """Training (shuffled, class-balanced) and validation window datasets from the cache.

    VA variants get a `va_vector` label, a copy of `va` from which `VAVectorMSE` builds the
    5-vector target.
    """
    variant = get_variant(config["variant"])
    common = dict(
        inputs={"feature": (cache, ["feature"]), "probabilities": (cache, ["probabilities"])},
        tasks=variant.tasks, window=window_size(config), windowed=["probabilities"],
        batch_size=config["batch_size"],
    )
    train_ds = window_dataset(train_index, training=True, shuffle_seed=config["seed"],
                              balance="expr" if config["balance"] else None, **common)
    val_ds = window_dataset(val_index, **common)
    if variant.va:
        train_ds, val_ds = train_ds.map(_add_va_vector_label), val_ds.map(_add_va_vector_label)
    return train_ds, val_ds


def _add_va_vector_label(x, y):
    """`va_vector` label: the (valence, arousal) labels, for `VAVectorMSE`."""
    return x, {**y, "va_vector": y["va"]}


# ----------------------------------------------------------------------------- phase (a)


def _paths(config, out):
    face_dir = config.get("face_dir") or os.path.join(out, "face")
    if config.get("face_model"):
        default_cache = os.path.join(os.path.dirname(os.path.abspath(config["face_model"])),
                                     "cache")
    else:
        default_cache = os.path.join(face_dir, "cache")
    return face_dir, config.get("cache") or default_cache


def load_face_model(path, schema):
    """A trained face feature model file, checked to give `feature` and `probabilities`."""
    model = keras.saving.load_model(path)
    outputs = model.output if isinstance(model.output, dict) else {}
    classes = get_schema(schema).num_expressions
    if set(outputs) != {"feature", "probabilities"} or outputs["probabilities"].shape[-1] != classes:
        raise ValueError(
            f"{path}: expected a face feature model with outputs `feature` (B, D) and "
            f"`probabilities` (B, {classes}) (as `do2020_face_model` builds it); got "
            f"{ {k: tuple(v.shape) for k, v in outputs.items()} or model.output}."
        )
    return model


def train_face_model(config, data, face_dir):
    """Phase (a): fine-tunes the face model on frames for expressions; returns it.

    A face model already in `<face_dir>/face_model.keras` is reused. Training runs as a
    resumable `Trainer` stage in `face_dir` (model.keras, metrics.json, history.csv, plots).
    """
    schema = get_schema(config["edition"])
    path = os.path.join(face_dir, FACE_MODEL_FILE)
    if os.path.exists(path):
        print(f"[face] using the face model of {path}")
        return load_face_model(path, schema)
    keras.utils.set_random_seed(config["seed"])
    tasks = ("expr",)
    train_index = FrameIndex.from_affwild2(data, schema, "train", tasks=INDEX_TASKS)
    val_index = FrameIndex.from_affwild2(data, schema, "val", tasks=INDEX_TASKS)
    common = dict(tasks=tasks, batch_size=config["face_batch_size"],
                  image_size=config["image_size"], normalization="unit")
    train_ds = frame_dataset(
        balanced_expression_index(train_index, config["seed"]), training=True,
        shuffle_seed=config["seed"],
        augment=default_augmentation(config["seed"]) if config["augment"] else None, **common,
    )
    val_ds = frame_dataset(val_index, **common)
    val_labels = label_arrays(val_index, tasks)

    trainer = Trainer.from_config(face_dir, schema, tasks, config)
    with trainer.strategy.scope():
        face = build_face_model(config, schema)
        network = keras.Model(face.input, {"expr": face.get_layer("probabilities").output},
                              name="do2020_face_training")
    trainer.run_stage(
        "face", network, {"expr": affect_losses.MaskedCategoricalCrossentropy()},
        lambda: keras.optimizers.Adam(config["face_learning_rate"]),
        train_ds, val_ds, val_labels, epochs=config["face_epochs"],
    )
    baselines = {"expr": metrics.chance_baselines("expr", schema, label_arrays(train_index, tasks)["expr"],
                                                  val_labels["expr"])}
    trainer.finish(network, val_ds, val_labels, baselines=baselines,
                   extra={"recipe": RECIPE, "phase": "face", "config": config})
    best = keras.saving.load_model(os.path.join(face_dir, "model.keras"))
    face = keras.Model(best.input, {"feature": best.get_layer("feature").output,
                                    "probabilities": best.get_layer("probabilities").output},
                       name="do2020_face_model")
    face.save(path)
    return face


def weights_fingerprint(model):
    """SHA-1 of a model's weights: the cache manifest names the exact face model."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def extract_cache(face, indices, cache_dir, config):
    """Runs the face model once over every frame of the indices into `cache_dir`.

    Videos already cached are skipped; a cache of another face model raises (its manifest
    holds the weights' fingerprint).
    """
    description = {"name": face.name, "recipe": RECIPE, "weights_sha1": weights_fingerprint(face)}
    for index in indices:
        extract_features(face, index, cache_dir, normalization="unit",
                         batch_size=config["extract_batch_size"], description=description)
    cache = FeatureCache(cache_dir)
    classes = get_schema(config["edition"]).num_expressions
    if cache.dims.get("probabilities") != classes or "feature" not in cache.dims:
        raise ValueError(f"{cache_dir}: expected outputs `feature` and `probabilities` "
                         f"({classes} classes); the cache has {cache.dims}.")
    return cache


# ----------------------------------------------------------------------------- phase (b)


def train(config, data, out):
    """Both phases for the config's variant into `out`; returns the run's report.

    Phase (a) is skipped when `config["face_model"]` names a trained face model or the face
    directory already holds one; the cache skips videos already extracted.
    """
    schema = get_schema(config["edition"])
    variant = get_variant(config["variant"])
    config = dict(config, variant=variant_name(variant))
    face_dir, cache_dir = _paths(config, out)
    if config.get("face_model"):
        face = load_face_model(config["face_model"], schema)
    else:
        face = train_face_model(config, data, face_dir)
    train_index = FrameIndex.from_affwild2(data, schema, "train", tasks=INDEX_TASKS)
    val_index = FrameIndex.from_affwild2(data, schema, "val", tasks=INDEX_TASKS)
    cache = extract_cache(face, (train_index, val_index), cache_dir, config)
    config["feature_dim"] = cache.dims["feature"]

    keras.utils.set_random_seed(config["seed"])
    tasks = variant.tasks
    train_ds, val_ds = window_datasets(config, cache, train_index, val_index)
    val_labels = label_arrays(val_index, tasks)
    trainer = Trainer.from_config(out, schema, tasks, config)
    with trainer.strategy.scope():
        network = build_model(config, schema)
    trainer.run_stage(
        "temporal", network, build_losses(config),
        lambda: keras.optimizers.Adam(config["learning_rate"]),
        train_ds, val_ds, val_labels, epochs=config["epochs"],
        loss_weights=build_loss_weights(config),
    )

    all_train = label_arrays(train_index, INDEX_TASKS)
    all_val = label_arrays(val_index, INDEX_TASKS)
    baselines = {task: metrics.chance_baselines(task, schema, all_train[task], all_val[task])
                 for task in INDEX_TASKS}
    targets = frame_rows(val_index)
    face_probabilities = cache.features_for(targets, ["probabilities"])["probabilities"]
    face_scores = metrics.abaw_scores("expr", schema, all_val["expr"], face_probabilities)
    extra = {"recipe": RECIPE, "variant": variant_name(variant), "table_i_model": variant.number,
             "window": window_size(config), "face_model_softmax": {"expr": face_scores},
             "face_dir": os.path.abspath(face_dir), "cache": cache.path, "config": config}
    scores = trainer.finish(network, val_ds, val_labels, baselines=baselines, extra=extra)

    best = keras.saving.load_model(os.path.join(out, "model.keras"))
    predictions = predict_arrays(best, val_ds, tasks)
    arrays = {"video": targets["video"].to_numpy(str), "frame": targets["frame"].to_numpy(np.int64),
              "edition": np.array(schema.edition), "label_va": all_val["va"],
              "label_expr": all_val["expr"], **predictions}
    np.savez(os.path.join(out, PREDICTIONS_FILE), **arrays)
    return {"variant": variant_name(variant), "validation": scores, "chance_baselines": baselines,
            "face_model_softmax": {"expr": face_scores}, "window": window_size(config)}


# ----------------------------------------------------------------------------- fusion


def _load_run(run_dir):
    path = os.path.join(run_dir, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such file; expected a run directory of {RECIPE} (its training writes "
            f"{PREDICTIONS_FILE} and metrics.json)."
        )
    with np.load(path, allow_pickle=False) as data:
        run = {key: data[key] for key in data.files}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        run["metrics"] = json.load(f)
    return run


def fuse(run_dirs, out):
    """Average fusion of trained variants (the paper's "Fusion" row of Table II).

    Expression probabilities are averaged over all runs, valence-arousal over the runs that
    predict it; the fusion is scored on the runs' common validation frames. Writes
    `<out>/metrics.json` and `<out>/val_predictions.npz`; returns the report.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"--fuse needs at least two run directories; got {list(run_dirs)}.")
    runs = [_load_run(d) for d in run_dirs]
    first = runs[0]
    for run_dir, run in zip(run_dirs[1:], runs[1:]):
        same = (str(run["edition"]) == str(first["edition"])
                and np.array_equal(run["video"], first["video"])
                and np.array_equal(run["frame"], first["frame"]))
        if not same:
            raise ValueError(
                f"{run_dir}: its validation frames or edition differ from those of "
                f"{run_dirs[0]}; fusion needs runs on the same data and edition."
            )
    schema = get_schema(str(first["edition"]))
    predictions = {"expr": np.mean([run["expr"] for run in runs], axis=0)}
    with_va = [run for run in runs if "va" in run]
    if with_va:
        predictions["va"] = np.mean([run["va"] for run in with_va], axis=0)
    labels = {"va": first["label_va"], "expr": first["label_expr"]}
    scores = {}
    for task, values in predictions.items():
        for name, value in metrics.abaw_scores(task, schema, labels[task], values).items():
            scores[f"{task}_{name}"] = value
    report = {
        "recipe": RECIPE, "edition": schema.edition, "fusion": "average",
        "runs": [os.path.abspath(d) for d in run_dirs],
        "validation": scores,
        "chance_baselines": first["metrics"].get("chance_baselines", {}),
        "per_run": {os.path.abspath(d): {"variant": run["metrics"].get("variant"),
                                         "validation": run["metrics"]["validation"]}
                    for d, run in zip(run_dirs, runs)},
    }
    os.makedirs(out, exist_ok=True)
    write_scores(os.path.join(out, "metrics.json"), report)
    np.savez(os.path.join(out, PREDICTIONS_FILE), video=first["video"], frame=first["frame"],
             edition=first["edition"], label_va=first["label_va"],
             label_expr=first["label_expr"], **predictions)
    return report


# ----------------------------------------------------------------------------- reports


def _cell(scores, key):
    return f"{scores[key]:7.4f}" if key in scores else "      -"


def _print_rows(title, rows, baselines):
    expr_base = baselines.get("expr", {})
    va_base = baselines.get("va", {})
    print(f"\n{title}")
    print(f"  {'model':<44s} {'Acc.':>7s} {'F1':>7s} {'Expr.':>7s} {'Aro.':>7s} "
          f"{'Val.':>7s} {'VA':>7s}")
    base = {"expr_accuracy": expr_base.get("accuracy"), "expr_f1": expr_base.get("f1"),
            "expr_score": expr_base.get("score"), "va_arousal": va_base.get("arousal"),
            "va_valence": va_base.get("valence"), "va_score": va_base.get("score")}
    for label, scores in rows + [("chance baseline (majority class, mean VA)",
                                  {k: v for k, v in base.items() if v is not None})]:
        cells = " ".join(_cell(scores, key) for key in
                         ("expr_accuracy", "expr_f1", "expr_score", "va_arousal", "va_valence",
                          "va_score"))
        print(f"  {label:<44s} {cells}")


def print_report(report, schema):
    """The run's validation scores beside the chance baselines, in Table II's columns."""
    variant = get_variant(report["variant"])
    expr_rule = "0.67 F1 + 0.33 Acc." if schema.expr_score_uses_accuracy else "F1"
    face = {f"expr_{k}": v for k, v in report["face_model_softmax"]["expr"].items()}
    _print_rows(
        f"Validation, {schema.edition} (best epoch; Expr. = {expr_rule}, VA = mean CCC)",
        [(f"model {variant.number}: {variant.title} (s={report['window']})",
          report["validation"]),
         ("face model softmax alone (phase a)", face)],
        report["chance_baselines"],
    )


def print_fusion(report):
    """Each fused run and the fusion, in Table II's columns."""
    schema = get_schema(report["edition"])
    rows = []
    for run_dir, run in report["per_run"].items():
        variant = get_variant(run["variant"])
        rows.append((f"model {variant.number}: {variant.title}", run["validation"]))
    rows.append((f"average fusion of {len(rows)} runs", report["validation"]))
    expr_rule = "0.67 F1 + 0.33 Acc." if schema.expr_score_uses_accuracy else "F1"
    _print_rows(f"Validation, {schema.edition} (Expr. = {expr_rule}, VA = mean CCC)", rows,
                report["chance_baselines"])


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Variants (paper Table I): " + "; ".join(
                                         f"{v.number} {k} ({v.title})" for k, v in VARIANTS.items()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Aff-Wild2 root (or `affectkit demo-data` output)")
    parser.add_argument("--out", required=True, help="run directory (or fusion directory)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--variant", help="Table I model: a name below or its number 1-6 "
                                          "(default: the preset's, model 6)")
    parser.add_argument("--edition", help="ABAW edition of the labels (default: abaw1)")
    parser.add_argument("--epochs", type=int, help="epochs of the temporal model (phase b)")
    parser.add_argument("--face-epochs", type=int, help="epochs of the face model (phase a)")
    parser.add_argument("--batch-size", type=int, help="windows per batch (phase b)")
    parser.add_argument("--face-batch-size", type=int, help="frames per batch (phase a)")
    parser.add_argument("--window", type=int, help="frames per window, s (16 or 32)")
    parser.add_argument("--lstm-layers", type=int, choices=(1, 2))
    parser.add_argument("--learning-rate", type=float, help="learning rate of phase (b)")
    parser.add_argument("--image-size", type=int, help="face model input size")
    parser.add_argument("--weights", help="local weights file of the face model: keras-vggface "
                                          "VGGFace2 ResNet-50 .h5, or do2020_face_model weights")
    parser.add_argument("--trainable-from", help="first trained layer of the face model "
                                                 "('none': train every layer)")
    parser.add_argument("--face-dir", help="phase (a) run directory, shared by variants "
                                           "(default: <out>/face)")
    parser.add_argument("--face-model", help="a trained face feature model (.keras); skips phase (a)")
    parser.add_argument("--cache", help="feature cache folder (default: <face-dir>/cache)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--fuse", nargs="+", metavar="RUN_DIR",
                        help="average the validation predictions of these runs and score them")
    args = parser.parse_args(argv)

    if args.fuse:
        report = fuse(args.fuse, args.out)
        print_fusion(report)
        print(f"\nFusion written to {os.path.join(args.out, 'metrics.json')}")
        return 0
    if not args.data:
        parser.error("--data is required (except with --fuse)")
    config = copy.deepcopy(PRESETS[args.preset])
    options = {"edition": args.edition, "variant": args.variant, "epochs": args.epochs,
               "face_epochs": args.face_epochs, "batch_size": args.batch_size,
               "face_batch_size": args.face_batch_size, "window": args.window,
               "lstm_layers": args.lstm_layers, "learning_rate": args.learning_rate,
               "image_size": args.image_size, "weights": args.weights, "face_dir": args.face_dir,
               "face_model": args.face_model, "cache": args.cache, "seed": args.seed}
    config.update({k: v for k, v in options.items() if v is not None})
    if args.trainable_from is not None:
        config["trainable_from"] = None if args.trainable_from.lower() == "none" else args.trainable_from
    config["variant"] = variant_name(config["variant"])
    config["mixed_precision"] = args.mixed_precision
    config["jit_compile"] = args.jit_compile
    report = train(config, args.data, args.out)
    print_report(report, get_schema(config["edition"]))
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, {PREDICTIONS_FILE}, "
          "history.csv, plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
