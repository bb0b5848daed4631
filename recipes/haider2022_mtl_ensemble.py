"""haider2022_mtl_ensemble: InceptionV3 + region attention + transformer, two-view ensemble
(Haider et al., "An Ensemble Approach for Multiple Emotion Descriptors Estimation Using
Multi-task Learning", ABAW4 MTL challenge, 2022).

Valence-arousal, 8 expressions and 12 AUs from one network (paper section 3, built on the
ABAW3 MTL winner's code): InceptionV3 cut after `mixed7` (17x17x768 at 299x299) ->
`RegionAttention` (R = 17 regions: the 12 labelled AUs and 5 hidden ones, 16-wide tokens)
-> one transformer encoder layer over the R tokens (sinusoidal positions, dropout 0.3,
8 heads, feed-forward 1024, GELU). Heads: one classifier per AU on the first 12 encoded
tokens; expression and VA from the average of per-token projections of the tokens before
the transformer. Losses (summed): AU binary cross-entropy with per-AU positive weights,
expression cross-entropy with class weights (both computed from the training labels), and
1 - CCC per VA dimension. SGD (momentum 0.9, lr 1e-3), batch 24, 50 epochs.

One model is trained per input view (`cropped`: the face with context; `cropped_aligned`:
the aligned face); the final system averages the two models' outputs, each model on its
own view (paper Table 5: validation MTL score 0.917, baseline 0.30).

    python recipes/haider2022_mtl_ensemble.py --data DIR --view cropped --out runs/h22_cropped
    python recipes/haider2022_mtl_ensemble.py --data DIR --view cropped_aligned \\
        --out runs/h22_aligned
    python recipes/haider2022_mtl_ensemble.py --data DIR --ensemble runs/h22_cropped \\
        runs/h22_aligned --out runs/h22_ensemble
    python recipes/haider2022_mtl_ensemble.py --data demo/data --preset cpu_demo \\
        --view cropped --out demo/h22_cropped --attention-maps 6

The recipe is a config of hyperparameters (`PRESETS`) plus `build_model(config, schema)`,
so a KerasTuner HyperModel can wrap it. `cpu_demo` keeps the region attention, transformer
and heads but swaps InceptionV3 at 299 (about 8 images/s to train on 2 CPU cores) for a
small bottleneck ResNet at 64 px. Any Keras image model file can replace the backbone
(`--backbone-file model.keras --backbone-layer NAME`).
"""

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit import metrics  # noqa: E402
from affectkit.data import affwild2  # noqa: E402
from affectkit.data.affwild2 import AnnotationNotFoundError, FrameIndex  # noqa: E402
from affectkit.data.pipeline import default_augmentation, frame_dataset, label_arrays  # noqa: E402
from affectkit.evaluation import evaluate_files, format_scores, write_scores  # noqa: E402
from affectkit.inference import decode_outputs, write_official_predictions  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.models.backbones import build_backbone, model_file_backbone  # noqa: E402
from affectkit.models.backbones.inception import inception_preprocessing  # noqa: E402
from affectkit.models.builders import imagenet_normalization  # noqa: E402
from affectkit.models.layers.region_attention import RegionAttention  # noqa: E402
from affectkit.models.layers.transformer import TransformerEncoder  # noqa: E402
from affectkit.training.trainer import Trainer, predict_arrays, validation_scores  # noqa: E402

TASKS = ("va", "expr", "au")
# The ABAW3 winner's code (and so Haider et al.) adds 5 unlabelled AUs as extra regions.
HIDDEN_AUS = ("AU5", "AU9", "AU14", "AU16", "AU17")
# Recipe view names (Aff-Wild2 folder names) -> `frame_dataset(view=...)`.
VIEWS = {"cropped": "cropped", "cropped_aligned": "aligned"}
INPUT_NORMALIZATIONS = ("inception", "imagenet", "unit")
ANNOTATIONS = ("auto", "mtl", "per_task")
# 1 - CCC per VA dimension, summed (paper section 3): `MaskedCCCLoss` is their mean.
LOSS_WEIGHTS = {"va": 2.0, "expr": 1.0, "au": 1.0}

PAPER = {
    "edition": "abaw4",
    "annotations": "auto",  # the MTL file of the split when there is one, else per task
    "view": "cropped_aligned",
    "image_size": 299,
    "backbone": "inception_v3",
    "backbone_config": {"cut": "mixed7"},
    "backbone_file": None,
    "backbone_layer": None,
    "input_normalization": "inception",
    "weights": None,
    "num_regions": 17,
    "attention_stem_channels": 68,
    "token_width": 16,
    "region_channels": 16,
    "transformer_heads": 8,
    "transformer_mlp_dim": 1024,
    "transformer_dropout": 0.1,  # PyTorch's default in the winner's encoder layer
    "position_dropout": 0.3,
    # The authors' code: projection + one linear layer per task. The paper's text calls
    # VA "two fully connected layers" (projection + Dense) and EXPR a three-layer MLP:
    # `expr_hidden_units=(128,)` gives projection + Dense(128) + Dense(8).
    "expr_hidden_units": (),
    "va_hidden_units": (),
    "au_pos_weights": "auto",  # negatives / positives per AU of the training labels
    "expr_class_weights": "auto",  # largest class count / class count
    "batch_size": 24,
    "augment": True,
    "epochs": 50,
    "optimizer": "sgd",  # or "adam" (`build_optimizer`)
    "learning_rate": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "attention_maps": 8,
    "seed": 0,
}

PRESETS = {
    "paper": PAPER,
    # Trains from scratch on the default demo data (`affectkit demo-data`) in a few minutes
    # on 2 CPU cores: a 2-stage bottleneck ResNet (one block per stage) at 64 px gives an
    # 8x8x128 map instead of InceptionV3's 17x17x768 at 299. Adam: the paper's SGD from
    # scratch (with a 3-stage, 4x4 version) stayed near chance within the demo's epochs.
    "cpu_demo": dict(
        PAPER,
        edition="abaw3",
        image_size=64,
        backbone="resnet50",
        backbone_config={"depths": (1, 1), "stem_width": 32, "widths": (64, 128),
                         "bottleneck_widths": (16, 32)},
        input_normalization="imagenet",
        batch_size=24,
        epochs=12,
        optimizer="adam",
        learning_rate=1e-3,
        attention_maps=6,
    ),
}


# --------------------------------------------------------------------------- model


def _input_normalization(name):
    """The core layer mapping the model's [0, 1] RGB input to the backbone's range."""
    if name == "inception":
        return inception_preprocessing()
    if name == "imagenet":
        return imagenet_normalization()
    if name == "unit":
        return None
    raise ValueError(
        f"input_normalization {name!r}: expected one of {INPUT_NORMALIZATIONS} "
        "('inception' maps to [-1, 1], 'imagenet' subtracts the ImageNet mean and divides "
        "by its std, 'unit' keeps [0, 1])."
    )


def _backbone(config, input_shape):
    """The feature-map backbone of a config: a registered preset or a Keras model file."""
    if config.get("backbone_file"):
        backbone = model_file_backbone(
            config["backbone_file"], layer=config.get("backbone_layer"), input_shape=input_shape
        )
        where = f"{config['backbone_file']} cut at {config.get('backbone_layer')!r}"
    else:
        backbone = build_backbone(
            config["backbone"], input_shape=input_shape, weights=config.get("weights"),
            **(config.get("backbone_config") or {}),
        )
        where = f"backbone {config['backbone']!r}"
    outputs = backbone.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        shapes = [tuple(o.shape) for o in outputs]
        raise ValueError(
            f"{where}: region attention needs one feature map (batch, height, width, "
            f"channels); the backbone outputs {shapes}. Pick a convolutional layer "
            "(e.g. InceptionV3 'mixed7')."
        )
    return backbone


def build_model(config, schema):
    """The Haider et al. 2022 network of a config (no training objects).

    Input: RGB in [0, 1], `(image_size, image_size, 3)`. Outputs: `va` (B, 2) linear,
    `expr` (B, C) softmax, `au` (B, K) sigmoid, in the schema's order.

    Example:
    >>> config = dict(PRESETS["cpu_demo"], image_size=32)
    >>> build_model(config, "abaw3").output_shape["au"]
    (None, 12)
    """
    schema = get_schema(schema)
    size = int(config["image_size"])
    regions, width = int(config["num_regions"]), int(config["token_width"])
    heads = int(config["transformer_heads"])
    if regions < schema.num_aus:
        raise ValueError(
            f"num_regions={regions}: expected at least one region per AU "
            f"({schema.num_aus} in {schema.edition}; the paper uses 17 = 12 + 5 hidden AUs)."
        )
    if width % heads:
        raise ValueError(
            f"token_width={width} is not divisible by transformer_heads={heads}; each head "
            "attends over token_width / heads channels (16 / 8 = 2 in the paper)."
        )

    # === Layers ===
    normalization = _input_normalization(config["input_normalization"])
    backbone = _backbone(config, (size, size, 3))
    region_attention = RegionAttention(
        num_regions=regions,
        stem_channels=int(config["attention_stem_channels"]),
        token_width=width,
        embed_channels=int(config["region_channels"]),
        return_attention=True,
        name="region_attention",
    )
    transformer = TransformerEncoder(
        num_layers=1,
        num_heads=heads,
        head_dim=width // heads,
        mlp_dim=int(config["transformer_mlp_dim"]),
        dropout=float(config["transformer_dropout"]),
        activation="gelu",
        norm_first=False,
        positional_encoding=True,
        max_length=regions,
        positional_dropout=float(config["position_dropout"]),
        name="region_transformer",
    )
    # The first K encoded tokens are the labelled AUs' regions; AU k's classifier is
    # its own weight vector and bias on token k.
    labelled_tokens = keras.layers.Cropping1D((0, regions - schema.num_aus), name="au_tokens")
    au_head = keras.layers.EinsumDense(
        "brt,rt->br", output_shape=(schema.num_aus,), bias_axes="r", activation="sigmoid",
        dtype="float32", name="au",
    )
    # Expression and VA: a bias-free projection per region token, averaged over regions.
    projection = keras.layers.EinsumDense(
        "brt,rtu->bru", output_shape=(regions, width), name="expr_va_projection"
    )
    average = keras.layers.GlobalAveragePooling1D(name="expr_va_average")
    expr_hidden = [
        keras.layers.Dense(int(units), activation="relu", name=f"expr_hidden_{i}")
        for i, units in enumerate(config.get("expr_hidden_units") or ())
    ]
    va_hidden = [
        keras.layers.Dense(int(units), activation="relu", name=f"va_hidden_{i}")
        for i, units in enumerate(config.get("va_hidden_units") or ())
    ]
    expr_head = keras.layers.Dense(
        schema.num_expressions, activation="softmax", dtype="float32", name="expr"
    )
    va_head = keras.layers.Dense(2, dtype="float32", name="va")

    # === Functional graph ===
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = inputs if normalization is None else normalization(inputs)
    tokens, _ = region_attention(backbone(x))
    encoded = transformer(tokens)
    au = au_head(labelled_tokens(encoded))
    shared = average(projection(tokens))
    expr, va = shared, shared
    for layer in expr_hidden:
        expr = layer(expr)
    for layer in va_hidden:
        va = layer(va)
    outputs = {"va": va_head(va), "expr": expr_head(expr), "au": au}
    return keras.Model(inputs, outputs, name="haider2022_mtl")


def attention_model(network):
    """A model from the network's input to its R attention maps `(B, H, W, R)` in [0, 1].

    Works on a freshly built network and on one loaded from `model.keras`.
    """
    try:
        layer = network.get_layer("region_attention")
    except ValueError:
        raise ValueError(
            f"{network.name!r} has no layer 'region_attention': expected a network built by "
            "haider2022_mtl_ensemble.build_model."
        ) from None
    return keras.Model(network.inputs, layer.output[1], name="region_attention_maps")


# --------------------------------------------------------------------------- losses


def build_losses(au_pos_weights=None, expr_class_weights=None):
    """The paper's masked losses: VA 1 - CCC (weighted by `LOSS_WEIGHTS` into the sum over
    both dimensions), weighted expression cross-entropy, weighted AU binary cross-entropy."""
    return {
        "va": affect_losses.MaskedCCCLoss(),
        "expr": affect_losses.MaskedCategoricalCrossentropy(class_weights=expr_class_weights),
        "au": affect_losses.MaskedBinaryCrossentropy(pos_weights=au_pos_weights),
    }


def build_optimizer(config):
    """The paper's SGD (momentum, optional weight decay), or Adam with `optimizer="adam"`."""
    weight_decay = config["weight_decay"] or None
    if config["optimizer"] == "sgd":
        return keras.optimizers.SGD(config["learning_rate"], momentum=config["momentum"],
                                    weight_decay=weight_decay)
    if config["optimizer"] == "adam":
        return keras.optimizers.Adam(config["learning_rate"], weight_decay=weight_decay)
    raise ValueError(f"optimizer={config['optimizer']!r}: expected 'sgd' or 'adam'.")


# --------------------------------------------------------------------------- data


def load_index(data, schema, split, annotations="auto", fill_missing_images=False):
    """The `FrameIndex` of a split: the MTL file (`"mtl"`), the per-task folders
    (`"per_task"`), or the MTL file when there is one, else the folders (`"auto"`)."""
    if annotations not in ANNOTATIONS:
        raise ValueError(f"annotations {annotations!r}: expected one of {ANNOTATIONS}.")
    if annotations in ("auto", "mtl"):
        try:
            return FrameIndex.from_mtl(data, schema, split, fill_missing_images=fill_missing_images)
        except AnnotationNotFoundError:
            if annotations == "mtl":
                raise
    return FrameIndex.from_affwild2(data, schema, split, fill_missing_images=fill_missing_images)


def _view(config):
    view = config["view"]
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: expected one of {tuple(VIEWS)} (Aff-Wild2 folder names).")
    return VIEWS[view]


def _dataset(index, config, training=False, missing_images="skip"):
    augment = None
    if training and config["augment"]:
        augment = default_augmentation(config["seed"])
    return frame_dataset(
        index, tasks=TASKS, batch_size=config["batch_size"], image_size=config["image_size"],
        view=_view(config), training=training, augment=augment, shuffle_seed=config["seed"],
        missing_images=missing_images, normalization="unit",
    )


# --------------------------------------------------------------------------- training


def train(config, data, out):
    """Trains one view's model into `out`; returns the run's report.

    The report holds `validation` (every ABAW component of the best epoch), `chance_baselines`
    (per task and `mtl`), `loss_weights` and `official` (the official prediction files of
    every annotated validation frame, scored by `affectkit.evaluation`).
    """
    schema = get_schema(config["edition"])
    keras.utils.set_random_seed(config["seed"])
    train_index = load_index(data, schema, "train", config["annotations"])
    val_index = load_index(data, schema, "val", config["annotations"])
    train_labels = label_arrays(train_index, TASKS)
    val_labels = label_arrays(val_index, TASKS)
    weights = affect_losses.resolve_loss_weights(config, train_labels, schema)
    train_ds = _dataset(train_index, config, training=True)
    val_ds = _dataset(val_index, config)

    trainer = Trainer.from_config(out, schema, TASKS, config)
    with trainer.strategy.scope():
        network = build_model(config, schema)
    trainer.run_stage(
        "sgd", network, build_losses(**weights),
        lambda: build_optimizer(config),
        train_ds, val_ds, val_labels, epochs=config["epochs"], loss_weights=LOSS_WEIGHTS,
    )
    baselines = chance_baselines(schema, train_labels, val_labels)
    scores = trainer.finish(network, val_ds, val_labels, baselines=baselines,
                            extra={"config": config, "loss_weights": weights,
                                   "view": config["view"]})
    best = keras.saving.load_model(os.path.join(out, "model.keras"))
    official = write_and_score_official(best, out, data, schema, config)
    if config.get("attention_maps"):
        save_attention_maps(best, val_index, config, schema,
                            os.path.join(out, "attention_maps.png"), config["attention_maps"])
    return {"validation": scores, "chance_baselines": baselines, "loss_weights": weights,
            "official": official}


def chance_baselines(schema, train_labels, val_labels):
    """`metrics.chance_baselines` per task and for the MTL sum (`"mtl"`)."""
    baselines = {t: metrics.chance_baselines(t, schema, train_labels[t], val_labels[t])
                 for t in TASKS}
    baselines["mtl"] = metrics.chance_baselines("mtl", schema, train_labels, val_labels)
    return baselines


def _predict_official(models_and_configs, data, schema, annotations):
    """Averaged outputs of the models over every annotated validation frame (frames
    without an image use the nearest one of their video), and that index."""
    index = load_index(data, schema, "val", annotations, fill_missing_images=True)
    outputs = [
        predict_arrays(model, _dataset(index, config, missing_images="fill"), TASKS)
        for model, config in models_and_configs
    ]
    return ensemble_outputs(outputs), index


def _write_official(out, index, outputs, schema):
    """Writes the official files: the MTL submission file for an MTL-file index, the
    per-task folders (and the MTL file) for per-task indexes; scores them."""
    frames = index.with_images_only().frames
    folder = os.path.join(out, "predictions")
    if "mtl" in (index.sources or {}):
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "mtl_submission.txt")
        decoded = decode_outputs(outputs)
        affwild2.write_mtl_submission(path, frames, decoded["va"], decoded["expr"],
                                      decoded["au"], schema)
        return {"mtl": evaluate_files(schema, "mtl", index.sources["mtl"], path)}
    written = write_official_predictions(folder, frames, outputs, schema)
    return {
        task: evaluate_files(schema, task, index.sources[task], written[task])
        for task in TASKS if task in (index.sources or {})
    }


def write_and_score_official(network, out, data, schema, config):
    """Predicts every annotated validation frame with `network`, writes the official
    files under `out/predictions` and scores them with `affectkit.evaluation`."""
    outputs, index = _predict_official([(network, config)], data, schema, config["annotations"])
    return _write_official(out, index, outputs, schema)


# --------------------------------------------------------------------------- ensemble


def ensemble_outputs(outputs):
    """The average of several models' outputs, per task (VA values, expression and AU
    probabilities), as in the paper's two-view ensemble.

    Example:
    >>> ensemble_outputs([{"va": np.zeros((1, 2))}, {"va": np.ones((1, 2))}])["va"]
    array([[0.5, 0.5]])
    """
    outputs = list(outputs)
    if not outputs:
        raise ValueError("ensemble_outputs: no model outputs to average.")
    tasks = set(outputs[0])
    for i, out in enumerate(outputs[1:], start=1):
        if set(out) != tasks:
            raise ValueError(f"ensemble_outputs: model {i} outputs {sorted(out)}, model 0 "
                             f"outputs {sorted(tasks)}; expected the same tasks.")
        for task in tasks:
            if np.shape(out[task]) != np.shape(outputs[0][task]):
                raise ValueError(
                    f"ensemble_outputs: {task!r} of model {i} has shape {np.shape(out[task])}, "
                    f"model 0 {np.shape(outputs[0][task])}; expected the same frames and sizes."
                )
    return {task: np.mean([np.asarray(out[task], np.float64) for out in outputs], axis=0)
            for task in outputs[0]}


def load_run(run_dir):
    """`(model, config)` of a finished run directory (its `model.keras` and `metrics.json`)."""
    model_path = os.path.join(run_dir, "model.keras")
    metrics_path = os.path.join(run_dir, "metrics.json")
    for path in (model_path, metrics_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: not found; expected a finished haider2022_mtl_ensemble run directory "
                "(model.keras and metrics.json written by training)."
            )
    with open(metrics_path) as f:
        config = json.load(f).get("config")
    if not config or "view" not in config:
        raise ValueError(f"{metrics_path}: no recipe config with a 'view'; expected a run "
                         "trained by haider2022_mtl_ensemble.")
    return keras.saving.load_model(model_path), config


def evaluate_ensemble(run_dirs, data, out, annotations=None):
    """Scores each run on its own view and the average of their outputs (the paper's
    ensemble) on the validation set; writes `out/metrics.json` and the official files.

    Returns a report with `members` (run -> scores), `ensemble`, `chance_baselines` and
    `official` (the ensemble's official files scored).
    """
    runs = [load_run(run_dir) for run_dir in run_dirs]
    editions = {config["edition"] for _, config in runs}
    if len(editions) != 1:
        raise ValueError(f"--ensemble: the runs use editions {sorted(editions)}; expected one.")
    schema = get_schema(editions.pop())
    annotations = annotations or runs[0][1]["annotations"]
    train_labels = label_arrays(load_index(data, schema, "train", annotations), TASKS)
    val_index = load_index(data, schema, "val", annotations)
    val_labels = label_arrays(val_index, TASKS)
    member_outputs, members = [], {}
    for run_dir, (model, config) in zip(run_dirs, runs):
        outputs = predict_arrays(model, _dataset(val_index, config), TASKS)
        member_outputs.append(outputs)
        members[run_dir] = {"view": config["view"],
                            "scores": validation_scores(schema, TASKS, val_labels, outputs)}
    averaged = ensemble_outputs(member_outputs)
    report = {
        "edition": schema.edition,
        "runs": list(run_dirs),
        "members": members,
        "ensemble": validation_scores(schema, TASKS, val_labels, averaged),
        "chance_baselines": chance_baselines(schema, train_labels, val_labels),
    }
    os.makedirs(out, exist_ok=True)
    official_outputs, official_index = _predict_official(runs, data, schema, annotations)
    report["official"] = _write_official(out, official_index, official_outputs, schema)
    write_scores(os.path.join(out, "metrics.json"), report)
    from affectkit import plots

    plots.write_run_plots(out, schema, TASKS, val_labels, averaged)
    return report


# --------------------------------------------------------------------------- attention


def region_names(schema, num_regions):
    """Names of the attention regions: the schema's AUs, then the hidden AUs."""
    names = list(get_schema(schema).aus) + list(HIDDEN_AUS)
    names += [f"region {i}" for i in range(len(names), num_regions)]
    return names[:num_regions]


def plot_attention_maps(images, maps, names, path):
    """One row per face: the image, then each region's attention map over it.

    Args:
        images: `(N, H, W, 3)` RGB in [0, 1].
        maps: `(N, h, w, R)` attention maps in [0, 1] (stretched over the image).
        names: R region names.
        path: PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, maps = np.asarray(images), np.asarray(maps)
    count, regions = len(images), maps.shape[-1]
    if len(names) != regions:
        raise ValueError(f"plot_attention_maps: {len(names)} names for {regions} maps.")
    fig, axes = plt.subplots(count, regions + 1, figsize=(1.1 * (regions + 1), 1.2 * count + 0.4),
                             squeeze=False)
    height, width = images.shape[1:3]
    for row in range(count):
        axes[row, 0].imshow(np.clip(images[row], 0, 1))
        for r in range(regions):
            ax = axes[row, r + 1]
            ax.imshow(np.clip(images[row], 0, 1))
            ax.imshow(maps[row, ..., r], cmap="jet", alpha=0.5, vmin=0, vmax=1,
                      extent=(0, width, height, 0), interpolation="bilinear")
            if row == 0:
                ax.set_title(names[r], fontsize=7)
    axes[0, 0].set_title("face", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Region attention maps (0 blue .. 1 red); hidden AUs last", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_attention_maps(network, index, config, schema, path, count):
    """Plots the attention maps of `network` over the first `count` faces of `index`,
    spread over its videos; returns the maps `(count, h, w, R)`."""
    frames = index.frames
    rows = np.flatnonzero(frames["has_image"].to_numpy(bool))
    if not len(rows):
        raise ValueError(f"save_attention_maps: no validation frame with an image in {index}.")
    picks = rows[np.unique(np.linspace(0, len(rows) - 1, int(count)).astype(int))]
    subset = FrameIndex(frames.iloc[picks].reset_index(drop=True), index.schema, index.root)
    images = np.concatenate([x for x, _ in _dataset(subset, config).as_numpy_iterator()])
    maps = attention_model(network).predict(images, verbose=0)
    plot_attention_maps(images, maps, region_names(schema, maps.shape[-1]), path)
    return maps


# --------------------------------------------------------------------------- report


def _report_rows(scores):
    return [
        ("VA valence CCC", scores["va_valence"]),
        ("VA arousal CCC", scores["va_arousal"]),
        ("VA score (mean CCC)", scores["va_score"]),
        ("EXPR macro F1 (8)", scores["expr_f1"]),
        ("AU mean F1 (12)", scores["au_f1"]),
        ("MTL P = VA + EXPR + AU", scores["score"]),
    ]


def _print_report(report, schema, view):
    chance = report["chance_baselines"]["mtl"]
    print(f"\nValidation, {schema.edition}, view {view} (best epoch)   model    chance baseline")
    for (label, value), (_, base) in zip(_report_rows(report["validation"]), _report_rows(chance)):
        print(f"  {label:<34s} {value:7.4f}   {base:7.4f}")
    for task, scores in report["official"].items():
        print(f"\nOfficial prediction files scored by affectkit.evaluation ({task}):")
        print(format_scores(scores))


def _print_ensemble(report):
    columns = [(f"{m['view']}", m["scores"]) for m in report["members"].values()]
    columns += [("ensemble", report["ensemble"]), ("chance", report["chance_baselines"]["mtl"])]
    print(f"\nValidation, {report['edition']}: each view's model and their average")
    print("  " + " " * 26 + "".join(f"{name:>17s}" for name, _ in columns))
    rows = [_report_rows(scores) for _, scores in columns]
    for i, (label, _) in enumerate(rows[0]):
        print(f"  {label:<26s}" + "".join(f"{r[i][1]:17.4f}" for r in rows))
    best_member = max(m["scores"]["score"] for m in report["members"].values())
    verdict = "beats" if report["ensemble"]["score"] > best_member else "does not beat"
    print(f"\nThe ensemble {verdict} the best single view on the MTL score "
          f"({report['ensemble']['score']:.4f} vs {best_member:.4f}).")
    for task, scores in report["official"].items():
        print(f"\nEnsemble's official prediction files scored by affectkit.evaluation ({task}):")
        print(format_scores(scores))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Aff-Wild2 root (or `affectkit demo-data` output)")
    parser.add_argument("--out", required=True, help="run directory (or ensemble directory)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--view", choices=sorted(VIEWS),
                        help="input frames: cropped (face with context) or cropped_aligned")
    parser.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                        help="score the average of these runs' models (each on its own view) "
                             "instead of training")
    parser.add_argument("--edition", help="ABAW edition of the labels (default: the preset's)")
    parser.add_argument("--annotations", choices=ANNOTATIONS,
                        help="MTL file or per-task folders (default: the preset's, auto)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--backbone", help="registered backbone name (e.g. inception_v3)")
    parser.add_argument("--weights", help="local backbone weights file")
    parser.add_argument("--backbone-file", help="any Keras image model file (.keras / .h5) to "
                                                "use as the backbone")
    parser.add_argument("--backbone-layer", help="layer of --backbone-file whose feature map "
                                                 "feeds the region attention ('sub/layer' inside "
                                                 "a nested model)")
    parser.add_argument("--input-normalization", choices=INPUT_NORMALIZATIONS,
                        help="what the backbone expects (default: the preset's)")
    parser.add_argument("--attention-maps", type=int, metavar="N",
                        help="plot the attention maps of N validation faces (0: none)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)

    if args.ensemble:
        if len(args.ensemble) < 2:
            parser.error("--ensemble needs at least two run directories.")
        report = evaluate_ensemble(args.ensemble, args.data, args.out, args.annotations)
        _print_ensemble(report)
        print(f"\nEnsemble directory: {args.out} (metrics.json, predictions, plots)")
        return 0

    config = copy.deepcopy(PRESETS[args.preset])
    overrides = {
        "view": args.view, "edition": args.edition, "annotations": args.annotations,
        "epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
        "learning_rate": args.learning_rate, "backbone": args.backbone, "weights": args.weights,
        "backbone_file": args.backbone_file, "backbone_layer": args.backbone_layer,
        "input_normalization": args.input_normalization, "attention_maps": args.attention_maps,
    }
    config.update({key: value for key, value in overrides.items() if value is not None})
    if args.backbone_file and args.input_normalization is None:
        config["input_normalization"] = "imagenet"
        print("--backbone-file without --input-normalization: assuming ImageNet mean/std.")
    config["augment"] = config["augment"] and not args.no_augment
    config["mixed_precision"] = args.mixed_precision
    config["jit_compile"] = args.jit_compile
    report = train(config, args.data, args.out)
    schema = get_schema(config["edition"])
    _print_report(report, schema, config["view"])
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, history.csv, plots"
          f"{', attention_maps.png' if config.get('attention_maps') else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
