"""liu2023_multimodal_ensemble: multimodal features, LSTM/Transformer encoders and a vote
ensemble (Liu et al., "Multi-modal Expression Recognition with Ensemble Method", ABAW5 2023).

Per-frame features of several pretrained extractors (visual and audio caches) are
concatenated and projected to the model width (paper eq. 1), encoded over video segments by
an LSTM that carries its state from one segment to the next (eq. 2, stride = segment length)
or by a transformer encoder (eq. 3: 4 layers, 4 heads, width 1024, dropout 0.3, segments of
128 frames), and classified per frame into the 8 ABAW5 expressions by an MLP (512 -> 256 ->
8). Training uses the R-Drop loss (eq. 4, alpha 5) with Adam (lr 1e-4) for 25 epochs, in
5-fold cross-validation (four folds cut from the training videos, the fifth the official
validation set, paper Table 2); models are combined by a per-frame majority vote (Table 3).
The score is the 8-class macro-F1 (eq. 5).

    python recipes/liu2023_multimodal_ensemble.py --data DIR --features CACHE [CACHE ...] \\
        --encoder lstm --out runs/liu_lstm                      # fold 5: official validation
    python recipes/liu2023_multimodal_ensemble.py --data DIR --features ... --folds all \\
        --out runs/liu_cv                                       # RUN_DIR/fold_1 ... fold_5
    python recipes/liu2023_multimodal_ensemble.py --ensemble runs/liu_lstm runs/liu_tf \\
        --out runs/liu_vote                                     # vote on official validation
    python recipes/liu2023_multimodal_ensemble.py --data demo/data --preset cpu_demo \\
        --encoder transformer --out demo/liu_tf                 # extracts its own caches

Without `--features` the recipe builds the caches itself under `--cache-dir` (default
`RUN_DIR/features`): a visual backbone (`--extract NAME_OR_MODEL_FILE`; the `cpu_demo`
preset has a random-initialised RegNetX-400MF at 64 px) and 80-band log-mel audio features.

The recipe is a config of hyperparameters (`PRESETS`) plus `build_model(config, schema)`,
so a KerasTuner HyperModel can wrap it (set `config["input_dim"]` to the feature width).
"""

import argparse
import copy
import glob
import hashlib
import json
import os
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from keras import ops  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit import metrics, plots  # noqa: E402
from affectkit.data.affwild2 import FrameIndex, annotation_dir  # noqa: E402
from affectkit.data.audio import AUDIO_FEATURES, extract_audio_features, source_video_name  # noqa: E402
from affectkit.data.features import FeatureCache, extract_features, feature_matrix  # noqa: E402
from affectkit.data.sequences import (  # noqa: E402
    segment_dataset,
    segment_indices,
    segment_labels,
    stream_order,
)
from affectkit.evaluation import evaluate_files, format_scores, write_scores  # noqa: E402
from affectkit.inference import write_official_predictions  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.models.layers import FusionBlock, SegmentLSTM, TransformerEncoder  # noqa: E402
from affectkit.training.trainer import Trainer  # noqa: E402

TASKS = ("expr",)
ENCODERS = ("lstm", "transformer")
NUM_FOLDS = 5  # folds 1-4 from the training videos, fold 5 the official validation set
VALIDATION_FOLD = NUM_FOLDS
STAGE = "rdrop"
OFFICIAL_PREDICTIONS = os.path.join("predictions", "official_validation.npz")

PAPER = {
    "edition": "abaw5",
    "encoder": "transformer",
    # Per-frame feature caches (paths); the paper's are pretrained MAE, IResNet100, DenseNet,
    # Wav2Vec 2.0, ECAPA-TDNN, HuBERT features. Without them, `visual_extractor` and
    # `audio_features` say which caches to build.
    "features": None,
    "visual_extractor": None,
    "audio_features": ("logmel",),
    "input_dim": None,  # width of the concatenated features (set by `train`)
    "normalize_features": True,  # standardise each feature dim (training-set statistics)
    "width": 1024,  # "affine dimension" of the fusion layer (eq. 1)
    "num_layers": 4,
    "num_heads": 4,
    "mlp_dim": 2048,  # transformer feed-forward width (not given; PyTorch's default)
    "positional_encoding": True,  # sinusoidal positions (not stated in the paper)
    "lstm_units": 1024,  # not given in the paper; the model width
    "dropout": 0.3,  # transformer layers; LSTM input dropout
    "head_units": (512, 256),
    "head_dropout": 0.3,
    "segment_length": 128,
    "train_stride": None,  # segment stride in training (transformer only); None = length
    "batch_size": 16,  # segments per batch; LSTM: parallel streams of segments
    "rdrop": True,
    "rdrop_alpha": 5.0,
    "learning_rate": 1e-4,
    "epochs": 25,
    "fold_seed": 0,
    "seed": 0,
}

# The 400-d pooled feature of RegNetX-400MF with random weights at 64 px: no download, about
# half a minute for the demo's frames on 2 cores. Pass `--extract FILE.keras --extract-layer
# NAME` for a trained face model, or `--features` for caches of pretrained extractors.
DEMO_EXTRACTOR = {
    "model": "regnetx_400mf",
    "image_size": 64,
    "overrides": {},
    "weights": None,
    "layer": None,
}

PRESETS = {
    "paper": PAPER,
    # Small enough to train from scratch on the synthetic demo data in minutes on 2 cores.
    # The transformer trains on overlapping segments (stride 4): with the demo's few
    # non-overlapping segments it barely leaves chance within 15 epochs.
    "cpu_demo": dict(
        PAPER,
        visual_extractor=DEMO_EXTRACTOR,
        train_stride=4,
        width=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=128,
        lstm_units=64,
        dropout=0.2,
        head_units=(64, 32),
        head_dropout=0.2,
        segment_length=32,
        batch_size=8,
        learning_rate=1e-3,
        epochs=15,
    ),
}


# ------------------------------------------------------------------------- model


def build_model(config, schema):
    """The network of a config: features -> fusion -> temporal encoder -> per-frame MLP.

    Inputs (a dict): `features` `(batch, time, input_dim)`, the concatenated per-frame
    features; with the LSTM encoder also `state_h` and `state_c` `(batch, lstm_units)`, the
    final state of the previous segment of the video (zeros for its first segment).
    Outputs (a dict): `expr` `(batch, time, classes)` probabilities; with the LSTM also
    `state_h`, `state_c`, the state at the segment's end (Liu et al. 2023, eq. 2).
    """
    schema = get_schema(schema)
    encoder = config["encoder"]
    if encoder not in ENCODERS:
        raise ValueError(f"Unknown encoder {encoder!r}: expected one of {ENCODERS}.")
    input_dim = config.get("input_dim")
    if not input_dim:
        raise ValueError(
            "config['input_dim'] is not set: expected the width of the concatenated per-frame "
            "features (train() sets it from the feature caches)."
        )
    width = int(config["width"])

    # Layers.
    normalization = (keras.layers.Normalization(axis=-1, name="feature_normalization")
                     if config["normalize_features"] else None)
    fusion = FusionBlock(width, activation=None, name="fusion")  # eq. 1, linear
    if encoder == "lstm":
        units = int(config["lstm_units"])
        temporal = SegmentLSTM(units, dropout=config["dropout"], name="segment_lstm")
    else:
        heads = int(config["num_heads"])
        if width % heads:
            raise ValueError(f"width {width} is not divisible by num_heads {heads}; expected "
                             "a width that splits evenly over the heads.")
        temporal = TransformerEncoder(
            config["num_layers"], heads, width // heads, config["mlp_dim"],
            dropout=config["dropout"], positional_encoding=config["positional_encoding"],
            max_length=max(2048, int(config["segment_length"])), name="transformer",
        )
    head = []
    for i, units_i in enumerate(config["head_units"]):
        head.append(keras.layers.Dense(int(units_i), activation="relu", name=f"head_dense_{i}"))
        head.append(keras.layers.Dropout(config["head_dropout"], name=f"head_dropout_{i}"))
    classifier = keras.layers.Dense(schema.num_expressions, activation="softmax",
                                    dtype="float32", name="expr")

    # Functional graph.
    features = keras.Input((None, int(input_dim)), name="features")
    inputs = {"features": features}
    x = features if normalization is None else normalization(features)
    x = fusion(x)
    states = {}
    if encoder == "lstm":
        inputs["state_h"] = keras.Input((units,), name="state_h")
        inputs["state_c"] = keras.Input((units,), name="state_c")
        x, states["state_h"], states["state_c"] = temporal(
            [x, inputs["state_h"], inputs["state_c"]])
    else:
        x = temporal(x)
    for layer in head:
        x = layer(x)
    outputs = {"expr": classifier(x), **states}
    return keras.Model(inputs, outputs, name=f"liu2023_{encoder}")


def build_losses(config):
    """R-Drop (Liu et al. 2023, eq. 4): mean CE of two dropout passes + alpha * symmetric KL;
    plain masked cross-entropy with `config["rdrop"]` off. Labels -1 are left out."""
    if config["rdrop"]:
        return {"expr": affect_losses.RDropLoss(alpha=config["rdrop_alpha"])}
    return {"expr": affect_losses.MaskedCategoricalCrossentropy()}


def is_stateful(network):
    """True for the LSTM network (it takes the previous segment's state as inputs)."""
    return isinstance(network.input, dict) and "state_h" in network.input


class SegmentStream(keras.Model):
    """The network as it is trained and run over a stream of segments (not saved itself).

    - LSTM networks: keeps the final state of every batch slot in non-trainable variables and
      feeds it to the next batch, resetting it where `starts_video` is True, so with
      `segment_dataset(..., order="streams", with_info=True)` each video is one pass of the
      LSTM, segment after segment (Liu et al. 2023, eq. 2). No gradient crosses a segment
      boundary (truncated back-propagation, as detaching the state in PyTorch). With R-Drop
      the first pass's state is carried.
    - R-Drop (`rdrop=True`): in training the network runs twice (different dropout) and
      `expr` is the two passes stacked on axis -2, `(batch, time, 2, classes)`, as
      `RDropLoss` expects. In inference it runs once: `(batch, time, classes)`.

    `save` writes the plain network, so the run's `model.keras` holds only affectkit layers.

    Args:
        network: the functional network of `build_model`.
        batch_size: segments per batch (LSTM: the number of streams); every batch must have
            exactly this many segments (`order="streams"` guarantees it).
        rdrop: run two passes in training.

    Example:
    >>> stream = SegmentStream(network, batch_size=8)
    >>> probabilities = stream.predict(segment_dataset(..., order="streams", with_info=True))
    """

    def __init__(self, network, batch_size, rdrop=True, **kwargs):
        super().__init__(**kwargs)
        # Layers.
        self.network = network
        self.stateful = is_stateful(network)
        if self.stateful:
            units = int(network.input["state_h"].shape[-1])
            self.state_h = self.add_weight(shape=(int(batch_size), units), initializer="zeros",
                                           trainable=False, name="carried_state_h")
            self.state_c = self.add_weight(shape=(int(batch_size), units), initializer="zeros",
                                           trainable=False, name="carried_state_c")
        # Config.
        self.batch_size = int(batch_size)
        self.rdrop = bool(rdrop)
        self.built = True

    def call(self, inputs, training=None):
        features = inputs["features"] if isinstance(inputs, dict) else inputs
        network_inputs = {"features": features}
        if self.stateful:
            if not isinstance(inputs, dict) or "starts_video" not in inputs:
                raise ValueError(
                    "SegmentStream (LSTM): expected inputs with `starts_video`, as "
                    "segment_dataset(..., order='streams', with_info=True) gives them."
                )
            carry = 1.0 - ops.cast(ops.reshape(inputs["starts_video"], (-1, 1)), "float32")
            network_inputs["state_h"] = self.state_h * carry
            network_inputs["state_c"] = self.state_c * carry
        outputs = self.network(network_inputs, training=training)
        if self.stateful:
            self.state_h.assign(ops.cast(outputs["state_h"], "float32"))
            self.state_c.assign(ops.cast(outputs["state_c"], "float32"))
        expr = outputs["expr"]
        if training and self.rdrop:
            second = self.network(network_inputs, training=True)["expr"]
            expr = ops.stack([expr, second], axis=-2)
        return {"expr": expr}

    def save(self, filepath, *args, **kwargs):
        """Saves the plain network (not this wrapper) to `filepath`."""
        return self.network.save(filepath, *args, **kwargs)


# ------------------------------------------------------------------------- segments


def _encoder_of(network):
    return "lstm" if is_stateful(network) else "transformer"


def segment_layout(index, config, training=False):
    """`(segments, order)`: the segments of `index` and the segment number of every batch
    slot of `segment_dataset` (-1 for filler slots), as `make_dataset` lays them out."""
    lstm = config["encoder"] == "lstm"
    stride = config["train_stride"] if training and not lstm else None
    segments = segment_indices(index.frames["video"].to_numpy(), config["segment_length"], stride)
    if lstm:
        return segments, stream_order(segments, config["batch_size"])
    return segments, np.arange(len(segments), dtype=np.int64)


def make_dataset(index, sources, config, training=False):
    """Segments of per-frame features with per-frame expression labels.

    LSTM: non-overlapping segments in parallel streams (the state carries from a segment to
    the next of its video); transformer: segments shuffled in training, in video order
    otherwise. Frames without an image take the nearest frame's features and keep their
    label (Liu et al. 2023, section 2.1); padding is labelled missing.
    """
    lstm = config["encoder"] == "lstm"
    order = "streams" if lstm else ("shuffle" if training else "video")
    stride = config["train_stride"] if training and not lstm else None
    return segment_dataset(
        index, {"features": sources}, tasks=TASKS, length=config["segment_length"],
        stride=stride, batch_size=config["batch_size"], order=order,
        shuffle_seed=config["seed"], missing_images="fill", with_info=True,
    )


def slot_labels(index, config):
    """Expression labels `(slots, length)` in the order `make_dataset(index, ...)` yields
    them (evaluation layout); filler slots and padding are -1."""
    segments, order = segment_layout(index, config)
    labels = segment_labels(index, segments, TASKS, missing_images="fill")["expr"]
    out = np.full((len(order), labels.shape[1]), index.schema.expr_missing, labels.dtype)
    real = order >= 0
    out[real] = labels[order[real]]
    return out


def frame_labels(index):
    """Expression labels per index row, -1 where missing or without any image to use."""
    expr = index.labels(TASKS)["expr"]
    usable = index.frames["image_frame"].to_numpy() >= 0
    return np.where(usable, expr, index.schema.expr_missing)


def predict_frames(network, index, sources, config):
    """Class probabilities `(len(index), classes)` for every row of `index`.

    Runs `network` over the segments of every video (LSTM: state carried segment to
    segment, reset at each video's start) and puts each segment's valid steps back on
    their rows.
    """
    segments, order = segment_layout(index, config)
    stream = SegmentStream(network, config["batch_size"], rdrop=False)
    slots = stream.predict(make_dataset(index, sources, config), verbose=0)["expr"]
    if len(slots) != len(order):
        raise RuntimeError(f"predict_frames: {len(slots)} segments predicted, expected "
                           f"{len(order)} ({config['encoder']} layout).")
    out = np.zeros((len(index.frames), slots.shape[-1]), np.float32)
    real = np.flatnonzero(order >= 0)
    chosen = segments.take(order[real])
    out[chosen.rows[chosen.valid]] = slots[real][chosen.valid]
    return out


# ------------------------------------------------------------------------- folds


def assign_folds(videos, frame_counts=None, num_folds=NUM_FOLDS - 1, seed=0):
    """Cuts training videos into `num_folds` folds by video (Liu et al. 2023, Table 2).

    The face tracks `x_left` and `x_right` of one source video share its audio, so they stay
    in the same fold. Source videos are shuffled with `seed`, then each (largest first) goes
    to the fold with the fewest frames so far.

    Args:
        videos: training video names.
        frame_counts: dict video -> frames (default 1 each: folds balanced by video count).
        num_folds: folds to cut (4: the fifth fold is the official validation set).
        seed: shuffle seed.
    Returns:
        list of `num_folds` sorted lists of video names; every video in exactly one.
    """
    videos = sorted(set(videos))
    groups = {}
    for video in videos:
        groups.setdefault(source_video_name(video), []).append(video)
    if len(groups) < num_folds:
        raise ValueError(
            f"{len(groups)} source videos cannot make {num_folds} folds; expected at least "
            f"{num_folds} training videos (after merging _left/_right tracks)."
        )
    counts = frame_counts or {}
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = np.array([sum(counts.get(v, 1) for v in groups[names[i]]) for i in order])
    folds = [[] for _ in range(num_folds)]
    totals = np.zeros(num_folds, np.int64)
    for position in np.argsort(-sizes, kind="stable"):
        fold = int(np.argmin(totals))
        folds[fold].extend(groups[names[order[position]]])
        totals[fold] += sizes[position]
    return [sorted(fold) for fold in folds]


def cross_validation_folds(train_videos, val_videos, frame_counts=None, seed=0):
    """Folds 1-4 cut from the training videos (`assign_folds`), fold 5 the validation set.

    Returns:
        dict fold number (1..5) -> sorted video names.
    """
    overlap = sorted(set(train_videos) & set(val_videos))
    if overlap:
        raise ValueError(f"Videos {overlap[:5]} are in both the training and the validation "
                         "set; expected disjoint splits.")
    folds = assign_folds(train_videos, frame_counts, NUM_FOLDS - 1, seed)
    table = {k + 1: fold for k, fold in enumerate(folds)}
    table[VALIDATION_FOLD] = sorted(set(val_videos))
    return table


def fold_split(folds, fold):
    """`(training videos, held-out videos)` of fold `fold` of `cross_validation_folds`."""
    if fold not in folds:
        raise ValueError(f"Unknown fold {fold!r}: expected one of {sorted(folds)}.")
    train = sorted(v for k, videos in folds.items() if k != fold for v in videos)
    return train, list(folds[fold])


# ------------------------------------------------------------------------- ensemble


def vote(probabilities):
    """Per-frame majority vote of several models' class predictions (Liu et al. 2023, 3.5).

    Each model votes for its argmax class; ties between the most-voted classes go to the one
    with the largest summed probability (then the lowest index).

    Args:
        probabilities: `(models, frames, classes)`.
    Returns:
        int64 `(frames,)` class indices.

    Example:
    >>> vote([[[0.6, 0.4]], [[0.3, 0.7]], [[0.9, 0.1]]])
    array([0])
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 3:
        raise ValueError(f"vote: probabilities of shape {p.shape}; expected (models, frames, "
                         "classes).")
    classes = p.shape[-1]
    votes = np.eye(classes)[np.argmax(p, axis=-1)].sum(axis=0)
    summed = p.sum(axis=0)
    tied = votes == votes.max(axis=-1, keepdims=True)
    return np.argmax(np.where(tied, summed, -np.inf), axis=-1).astype(np.int64)


def _member_runs(run_dirs):
    """Run directories with a trained model; a folder of `fold_k` runs gives each of them."""
    members = []
    for run_dir in run_dirs:
        if os.path.isfile(os.path.join(run_dir, OFFICIAL_PREDICTIONS)):
            members.append(run_dir)
            continue
        folds = sorted(glob.glob(os.path.join(run_dir, "fold_*", OFFICIAL_PREDICTIONS)))
        if not folds:
            raise FileNotFoundError(
                f"{run_dir}: no {OFFICIAL_PREDICTIONS}; expected the run directory of a "
                "finished training (or a folder of fold_k runs from --folds)."
            )
        members.extend(os.path.dirname(os.path.dirname(path)) for path in folds)
    return members


def ensemble(run_dirs, out, data=None):
    """Votes the official-validation predictions of trained runs; scores and writes them.

    Args:
        run_dirs: run directories (each with `predictions/official_validation.npz`), or
            folders of `fold_k` runs.
        out: output folder (`metrics.json`, `predictions/expr/<video>.txt`, confusion plot).
        data: the Aff-Wild2 folder, to score the written files with `affectkit.evaluation`.
    Returns:
        dict with `ensemble` scores, `members` (run, score, trained on validation?),
        `chance_baseline` and, with `data`, `official`.
    """
    members = _member_runs(run_dirs)
    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least 2 trained runs; got {members}.")
    loaded, reports = [], []
    for run in members:
        with np.load(os.path.join(run, OFFICIAL_PREDICTIONS), allow_pickle=False) as stored:
            loaded.append({key: stored[key] for key in stored.files})
        with open(os.path.join(run, "metrics.json")) as f:
            reports.append(json.load(f))
    first = loaded[0]
    edition = reports[0]["edition"]
    for run, stored, report in zip(members, loaded, reports):
        if report["edition"] != edition:
            raise ValueError(f"{run}: edition {report['edition']}, but {members[0]} has "
                             f"{edition}; expected one label schema for all members.")
        if not (np.array_equal(stored["video"], first["video"])
                and np.array_equal(stored["frame"], first["frame"])):
            raise ValueError(f"{run}: its validation frames differ from those of {members[0]}; "
                             "expected runs on the same validation set.")
    schema = get_schema(edition)
    labels = first["labels"]
    voted = vote(np.stack([stored["probabilities"] for stored in loaded]))
    scores = metrics.abaw_scores("expr", schema, labels, voted)
    member_rows = [
        {"run": run, "fold": report["fold"],
         "trained_on_validation": bool(report["trained_on_official_validation"]),
         "f1": metrics.abaw_scores("expr", schema, labels, stored["probabilities"])["f1"]}
        for run, stored, report in zip(members, loaded, reports)
    ]
    frames = pd.DataFrame({"video": first["video"].astype(str), "frame": first["frame"]})
    written = write_official_predictions(os.path.join(out, "predictions"), frames,
                                         {"expr": np.eye(schema.num_expressions)[voted]}, schema)
    result = {"edition": edition, "ensemble": scores, "members": member_rows,
              "chance_baseline": reports[0]["official_validation_chance_baseline"]}
    if data is not None:
        gt = os.path.join(data, annotation_dir(schema, "expr", "val"))
        result["official"] = evaluate_files(schema, "expr", gt, written["expr"])
    write_scores(os.path.join(out, "metrics.json"), result)
    plots.plot_confusion(labels, voted, schema.expressions,
                         os.path.join(out, "confusion_matrix.png"))
    return result


# ------------------------------------------------------------------------- features


def visual_feature_model(extractor, seed=0):
    """`(model, description)`: the visual extractor of a config, RGB in [0, 1] -> vector.

    `extractor["model"]` is a registered backbone name (with `overrides` of its
    hyperparameters, `weights` a local file or None) or a Keras model file cut at `layer`.
    """
    from affectkit.models import backbones
    from affectkit.models.backbones import inception, regnet, resnet_vggface2

    name = extractor["model"]
    size = int(extractor.get("image_size") or 112)
    shape = (size, size, 3)
    if name.lower().endswith((".keras", ".h5", ".hdf5")):
        model = backbones.model_file_backbone(name, layer=extractor.get("layer"),
                                              input_shape=shape, trainable=False)
        return model, {"name": model.name, "file": os.path.abspath(name),
                       "layer": extractor.get("layer")}
    if name not in backbones.available_backbones():
        raise ValueError(
            f"Unknown visual extractor {name!r}: expected a backbone name "
            f"({', '.join(backbones.available_backbones())}) or a Keras model file."
        )
    keras.utils.set_random_seed(seed)  # random-initialised extractors are reproducible
    overrides = dict(extractor.get("overrides") or {})
    weights = extractor.get("weights")
    backbone = backbones.build_backbone(name, shape, weights=weights, **overrides)
    if name == "vggface2_resnet50":
        normalize = resnet_vggface2.VGGFace2Preprocessing(name="vggface2_preprocessing")
    elif name == "inception_v3":
        normalize = inception.inception_preprocessing()
    else:
        normalize = regnet.regnet_preprocessing()
    inputs = keras.Input(shape, name="image")
    x = backbone(normalize(inputs))
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, x, name=f"{name}_features")
    description = {"name": model.name, "backbone": name, "overrides": overrides,
                   "weights": None if weights is None else os.path.abspath(weights),
                   "seed": None if weights is not None else int(seed)}
    return model, json.loads(json.dumps(description))


def prepare_features(config, data, cache_dir, verbose=1):
    """Builds (or finishes) the feature caches of `config` for every video of `data`.

    The visual cache comes from `config["visual_extractor"]`, one audio cache per entry of
    `config["audio_features"]` (`logmel`, `egemaps`). Caches that are complete are reused.

    Returns:
        list of cache folders, visual first.
    """
    extractor = config.get("visual_extractor")
    if not extractor:
        raise ValueError(
            "No feature caches and no visual extractor: pass --features CACHE [CACHE ...], "
            "or --extract BACKBONE_OR_MODEL_FILE to build a visual cache from the frames."
        )
    model, description = visual_feature_model(extractor, config["seed"])
    name = extractor["model"]
    if name.lower().endswith((".keras", ".h5", ".hdf5")):
        stem = os.path.splitext(os.path.basename(name))[0]
        tag = f"{stem}_{extractor.get('layer') or 'output'}"
    elif extractor.get("overrides"):
        digest = hashlib.sha1(json.dumps(extractor["overrides"], sort_keys=True).encode())
        tag = f"{name}_custom{digest.hexdigest()[:8]}"
    else:
        tag = name
    size = int(extractor.get("image_size") or 112)
    paths = [os.path.join(cache_dir, f"visual_{tag}_{size}px")]
    extract_features(model, data, paths[0], image_size=size, view="aligned",
                     normalization="unit", description=description, verbose=verbose)
    for audio in config["audio_features"] or ():
        if audio not in AUDIO_FEATURES:
            raise ValueError(f"Unknown audio features {audio!r}: expected some of "
                             f"{AUDIO_FEATURES}.")
        paths.append(os.path.join(cache_dir, f"audio_{audio}"))
        extract_audio_features(data, paths[-1], features=audio, verbose=verbose)
    return paths


# ------------------------------------------------------------------------- training


def _concat(*indexes):
    frames = pd.concat([index.frames for index in indexes], ignore_index=True)
    return FrameIndex(frames, indexes[0].schema, indexes[0].root)


class Splits(NamedTuple):
    """The frame indexes of one fold (expression-annotated videos only).

    Attributes:
        train: the videos the fold trains on.
        held_out: the videos it is scored on (fold 5: the official validation set).
        official_train, official_val: the official splits.
        folds: the `cross_validation_folds` table (None for fold 5, which needs none).
    """

    train: FrameIndex
    held_out: FrameIndex
    official_train: FrameIndex
    official_val: FrameIndex
    folds: dict


def load_splits(data, schema, fold=VALIDATION_FOLD, fold_seed=0):
    """The `Splits` of fold `fold` (1..5) of an Aff-Wild2 folder.

    Frames without an image point at the nearest frame that has one (Liu et al. 2023,
    section 2.1), so every annotated frame is trained on and scored.
    """
    if fold not in range(1, NUM_FOLDS + 1):
        raise ValueError(f"Unknown fold {fold!r}: expected 1..{NUM_FOLDS}.")
    official_train = FrameIndex.from_affwild2(data, schema, "train", tasks=TASKS,
                                              fill_missing_images=True)
    official_val = FrameIndex.from_affwild2(data, schema, "val", tasks=TASKS,
                                            fill_missing_images=True)
    if fold == VALIDATION_FOLD:
        return Splits(official_train, official_val, official_train, official_val, None)
    counts = official_train.frames.groupby("video").size().to_dict()
    folds = cross_validation_folds(official_train.videos, official_val.videos, counts,
                                   fold_seed)
    train_videos, held_out_videos = fold_split(folds, fold)
    everything = _concat(official_train, official_val)
    return Splits(everything.subset(train_videos), everything.subset(held_out_videos),
                  official_train, official_val, folds)


def _feature_sources(config):
    paths = config.get("features")
    if not paths:
        raise ValueError("config['features'] is empty: expected feature cache folders "
                         "(--features, or let the recipe extract them from --data).")
    return [FeatureCache(path) for path in paths]


def train(config, data, out, fold=VALIDATION_FOLD):
    """Trains one fold into `out`; returns its report (held-out scores and baselines).

    Fold 5 trains on every training video and scores the official validation set; folds 1-4
    hold out a quarter of the training videos and train on the rest plus the validation set.
    Every run also predicts the official validation set (`predictions/`) for `ensemble`.
    """
    config = copy.deepcopy(config)
    schema = get_schema(config["edition"])
    keras.utils.set_random_seed(config["seed"])
    sources = _feature_sources(config)
    config["input_dim"] = int(sum(sum(cache.dims.values()) for cache in sources))
    splits = load_splits(data, schema, fold, config["fold_seed"])

    train_ds = make_dataset(splits.train, sources, config, training=True)
    held_out_ds = make_dataset(splits.held_out, sources, config)
    held_out_labels = {"expr": slot_labels(splits.held_out, config)}

    trainer = Trainer.from_config(out, schema, TASKS, config)
    if config["encoder"] == "lstm" and trainer.strategy.num_replicas_in_sync > 1:
        raise ValueError("The LSTM encoder carries its state per batch slot, which needs one "
                         "replica; expected a single-device strategy (use one GPU).")
    with trainer.strategy.scope():
        network = build_model(config, schema)
        stream = SegmentStream(network, config["batch_size"], rdrop=config["rdrop"])
    if config["normalize_features"]:
        matrix = feature_matrix(splits.train, sources)
        network.get_layer("feature_normalization").adapt(matrix[:, None, :])
    trainer.run_stage(
        STAGE, stream, build_losses(config),
        lambda: keras.optimizers.Adam(config["learning_rate"]),
        train_ds, held_out_ds, held_out_labels, epochs=config["epochs"],
    )
    return _finish(trainer, network, config, schema, fold, splits, sources, data)


def _finish(trainer, network, config, schema, fold, splits, sources, data):
    """Best network -> `model.keras`, held-out scores, official-validation predictions,
    `metrics.json` and plots. (`Trainer.finish` predicts with the saved network alone,
    which the LSTM cannot: it needs the previous segment's state as an input.)"""
    out = trainer.run_dir
    best = (keras.saving.load_model(trainer.best_path) if os.path.exists(trainer.best_path)
            else network)
    best.save(os.path.join(out, "model.keras"))
    labels = frame_labels(splits.held_out)
    probabilities = predict_frames(best, splits.held_out, sources, config)
    scores = metrics.abaw_scores("expr", schema, labels, probabilities)
    baseline = metrics.chance_baselines("expr", schema, frame_labels(splits.train), labels)

    official_val = splits.official_val
    if fold == VALIDATION_FOLD:
        val_probabilities = probabilities
    else:
        val_probabilities = predict_frames(best, official_val, sources, config)
    val_labels = frame_labels(official_val)
    official_baseline = metrics.chance_baselines(
        "expr", schema, frame_labels(splits.official_train), val_labels)
    predictions = os.path.join(out, "predictions")
    os.makedirs(predictions, exist_ok=True)
    np.savez(os.path.join(out, OFFICIAL_PREDICTIONS),
             video=official_val.frames["video"].to_numpy(str),
             frame=official_val.frames["frame"].to_numpy(np.int64),
             probabilities=val_probabilities, labels=val_labels)
    written = write_official_predictions(predictions, official_val.frames,
                                         {"expr": val_probabilities}, schema)
    gt = os.path.join(data, annotation_dir(schema, "expr", "val"))
    official = evaluate_files(schema, "expr", gt, written["expr"])

    report = {
        "edition": schema.edition, "tasks": list(TASKS), "fold": fold,
        "validation": scores, "chance_baselines": {"expr": baseline},
        "official_validation": official,
        "official_validation_chance_baseline": official_baseline,
        "trained_on_official_validation": fold != VALIDATION_FOLD,
        "train_videos": splits.train.videos, "held_out_videos": splits.held_out.videos,
        "folds": None if splits.folds is None else {str(k): v for k, v in splits.folds.items()},
        "config": config,
    }
    write_scores(os.path.join(out, "metrics.json"), report)
    plots.write_run_plots(out, schema, TASKS, {"expr": labels}, {"expr": probabilities}, scores)
    return report


def train_folds(config, data, out, folds=tuple(range(1, NUM_FOLDS + 1))):
    """Trains the given folds into `out/fold_k`; returns {fold: report} (paper Table 2)."""
    reports = {}
    for fold in folds:
        print(f"\n=== fold {fold} of {NUM_FOLDS} "
              f"({'official validation set' if fold == VALIDATION_FOLD else 'training videos'})")
        reports[fold] = train(config, data, os.path.join(out, f"fold_{fold}"), fold=fold)
    summary = {str(k): {"f1": r["validation"]["f1"],
                        "chance_f1": r["chance_baselines"]["expr"]["f1"]}
               for k, r in reports.items()}
    summary["average"] = {key: float(np.mean([r[key] for r in summary.values()]))
                          for key in ("f1", "chance_f1")}
    write_scores(os.path.join(out, "cross_validation.json"), summary)
    return reports


# ------------------------------------------------------------------------- command line


def _print_report(report):
    fold = report["fold"]
    held = "official validation set" if fold == VALIDATION_FOLD else f"held-out fold {fold}"
    base = report["chance_baselines"]["expr"]
    val = report["validation"]
    print(f"\n{held}, {report['edition']} (best epoch)         model   chance (majority class)")
    print(f"  EXPR macro-F1, 8 classes (score)  {val['f1']:7.4f}   {base['f1']:7.4f}")
    print(f"  accuracy                          {val['accuracy']:7.4f}   {base['accuracy']:7.4f}")
    if fold != VALIDATION_FOLD:
        print("  (this fold's training data include the official validation set)")
    print("\nOfficial validation prediction files scored by affectkit.evaluation (expr):")
    print(format_scores(report["official_validation"]))


def _print_ensemble(result):
    print(f"\nVote ensemble on the official validation set ({result['edition']})")
    print(f"  {'member':<48s} fold   macro-F1")
    for row in result["members"]:
        flag = "  (trained on validation videos)" if row["trained_on_validation"] else ""
        print(f"  {row['run'][-48:]:<48s} {row['fold']:>4d}   {row['f1']:7.4f}{flag}")
    print(f"  {'ensemble (majority vote)':<48s}        {result['ensemble']['f1']:7.4f}")
    print(f"  {'chance (majority class of training)':<48s}        "
          f"{result['chance_baseline']['f1']:7.4f}")
    if "official" in result:
        print("\nEnsemble prediction files scored by affectkit.evaluation (expr):")
        print(format_scores(result["official"]))


def _parse_folds(values):
    if values == ["all"]:
        return tuple(range(1, NUM_FOLDS + 1))
    try:
        folds = tuple(int(v) for v in values)
    except ValueError:
        raise SystemExit(f"--folds: expected 'all' or fold numbers 1..{NUM_FOLDS}; got "
                         f"{' '.join(values)}.") from None
    bad = [f for f in folds if not 1 <= f <= NUM_FOLDS]
    if bad:
        raise SystemExit(f"--folds: fold(s) {bad} out of range; expected 1..{NUM_FOLDS}.")
    return folds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Aff-Wild2 root (or `affectkit demo-data` output)")
    parser.add_argument("--out", required=True, help="run directory (or ensemble output)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--edition", help="ABAW edition of the labels (default: the preset's)")
    parser.add_argument("--encoder", choices=ENCODERS, help="temporal encoder")
    parser.add_argument("--features", nargs="+", metavar="CACHE",
                        help="feature cache folders, concatenated per frame (visual, audio)")
    parser.add_argument("--extract", metavar="MODEL",
                        help="build the visual cache with this backbone name or model file")
    parser.add_argument("--extract-layer", help="layer of a model file to read features from")
    parser.add_argument("--extract-size", type=int, help="image size fed to the extractor")
    parser.add_argument("--extract-weights", help="local weights file of a backbone extractor")
    parser.add_argument("--audio", nargs="+", metavar="FEATURES",
                        help=f"audio caches to build: {', '.join(AUDIO_FEATURES)} or none")
    parser.add_argument("--cache-dir", help="where built caches go (default RUN_DIR/features)")
    folds = parser.add_mutually_exclusive_group()
    folds.add_argument("--fold", type=int, choices=range(1, NUM_FOLDS + 1),
                       help="train one fold (default 5: the official validation set)")
    folds.add_argument("--folds", nargs="+", metavar="K",
                       help="train several folds into RUN_DIR/fold_k: 'all' or numbers")
    folds.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                       help="vote the trained runs' predictions on the official validation set")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--segment-length", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)

    if args.ensemble:
        result = ensemble(args.ensemble, args.out, data=args.data)
        _print_ensemble(result)
        print(f"\nEnsemble output: {args.out} (metrics.json, predictions/expr, "
              "confusion_matrix.png)")
        return 0
    if not args.data:
        parser.error("--data is required to train (only --ensemble works without it).")

    config = copy.deepcopy(PRESETS[args.preset])
    for key in ("edition", "encoder", "epochs", "batch_size", "segment_length",
                "learning_rate", "seed"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    config["mixed_precision"] = args.mixed_precision
    config["jit_compile"] = args.jit_compile
    if args.extract:
        config["visual_extractor"] = {"model": args.extract, "image_size": args.extract_size,
                                      "overrides": {}, "weights": args.extract_weights,
                                      "layer": args.extract_layer}
    elif args.extract_size and config.get("visual_extractor"):
        config["visual_extractor"] = dict(config["visual_extractor"],
                                          image_size=args.extract_size)
    if args.audio is not None:
        config["audio_features"] = () if args.audio == ["none"] else tuple(args.audio)
    if args.features:
        config["features"] = [os.path.abspath(path) for path in args.features]
    else:
        cache_dir = args.cache_dir or os.path.join(args.out, "features")
        config["features"] = [os.path.abspath(path)
                              for path in prepare_features(config, args.data, cache_dir)]

    if args.folds:
        reports = train_folds(config, args.data, args.out, _parse_folds(args.folds))
        for report in reports.values():
            _print_report(report)
        print(f"\n{NUM_FOLDS}-fold cross-validation (held-out macro-F1; paper Table 2)")
        for fold, report in reports.items():
            print(f"  fold {fold}: {report['validation']['f1']:.4f}   chance "
                  f"{report['chance_baselines']['expr']['f1']:.4f}")
        print(f"  average: {np.mean([r['validation']['f1'] for r in reports.values()]):.4f}")
        print(f"\nRun directories: {args.out}/fold_k (model.keras, metrics.json, history.csv)")
        return 0
    report = train(config, args.data, args.out, fold=args.fold or VALIDATION_FOLD)
    _print_report(report)
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, history.csv, plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
