"""phan2022_regnet_transformer: RegNet + attention + transformer encoder (Phan et al., ABAW3 2022).

Expression classification (8 classes, ABAW3) over sequences of aligned faces, after Phan,
Huynh, Nguyen & Kim, "Expression Classification using Concatenation of Deep Neural Network
for the 3rd ABAW3 Competition" (CVPRW 2022). Each frame of a 64-frame sequence goes through
RegNetY-1.6GF (112x112 input, 888-d pooled feature). The per-frame features, reshaped to
(batch, sequence, feature), feed two blocks: multi-head self-attention (2 heads of width 64,
no residual) and a pre-norm transformer encoder layer (2 heads of width 64, MLP 512, no
positional encoding). Per frame, [backbone feature, attention output, transformer output]
(3 x 888) is concatenated, then Dropout(0.5) and Dense(8). Loss: focal loss (alpha 0.9,
gamma 2) with label smoothing 0.1. AdamW (lr 1e-3, weight decay 5e-5), batch 16, 30
epochs, learning rate reduced on plateau of the validation macro-F1.

The whole network trains end to end: the paper reshapes the backbone output to
(batch size, sequence, feature) inside the network, so the backbone runs on every frame
of the sequences at each step (pass `--freeze-backbone` to keep it fixed). Training
sequences are non-overlapping chunks of the frames that have both an expression label
and an image; the last chunk of a video is padded by repeating its last frame, and the
padded steps are labelled -1 (left out of loss and metrics).

    python recipes/phan2022_regnet_transformer.py --data DIR --out runs/phan2022
    python recipes/phan2022_regnet_transformer.py --data demo/data --preset cpu_demo --out demo/phan2022

The exported `model.keras` takes sequences of RGB frames in [0, 1],
(batch, sequence_length, image_size, image_size, 3), and returns {"expr": per-frame class
probabilities}; `predict_frames` runs it over every frame of a `FrameIndex`.

The recipe is a config of hyperparameters (`PRESETS`) plus `build_model(config, schema)`,
so a KerasTuner HyperModel can wrap it.
"""

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit import metrics  # noqa: E402
from affectkit.data.affwild2 import FrameIndex, annotation_dir  # noqa: E402
from affectkit.data.pipeline import decode_frame, normalize_images  # noqa: E402
from affectkit.data.sequences import segment_indices, segment_labels  # noqa: E402
from affectkit.evaluation import evaluate_files, format_scores  # noqa: E402
from affectkit.inference import write_official_predictions  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.models.backbones import model_file_backbone, regnet  # noqa: E402
from affectkit.models.layers import SelfAttentionBlock, TransformerEncoder  # noqa: E402
from affectkit.training.trainer import Trainer, predict_arrays  # noqa: E402

TASKS = ("expr",)
FRAME_SELECTIONS = ("labelled", "all")
BACKBONE_NORMALIZATIONS = ("imagenet", None)

PAPER = {
    "edition": "abaw3",
    # Frames and sequences.
    "image_size": 112,
    "sequence_length": 64,
    "train_stride": None,  # frames between training sequence starts; None: no overlap
    # Backbone: a RegNet preset (with overrides), or any Keras model file cut at a layer.
    "backbone": "regnety_1.6gf",
    "backbone_config": {},
    "backbone_file": None,
    "backbone_layer": None,
    "backbone_normalization": "imagenet",  # torchvision's ImageNet mean/std on [0, 1] RGB
    "weights": None,  # local RegNet weights file (ImageNet in the paper); None: random init
    "train_backbone": True,
    # Sequence blocks (paper Table 1).
    "attention_heads": 2,
    "attention_head_dim": 64,
    "transformer_layers": 1,
    "transformer_heads": 2,
    "transformer_head_dim": 64,
    "transformer_mlp_dim": 512,
    # Table 1's (depth, heads, head dim, MLP dim, dropout) are the arguments of the ViT
    # `Transformer` of vit-pytorch: pre-norm, GELU MLP.
    "transformer_activation": "gelu",
    "transformer_dropout": 0.0,
    "attention_dropout": 0.0,
    "dropout": 0.5,
    # Loss and optimisation.
    "focal_alpha": 0.9,
    "focal_gamma": 2.0,
    "label_smoothing": 0.1,
    "learning_rate": 1e-3,
    "weight_decay": 5e-5,
    "batch_size": 16,  # sequences per batch
    "epochs": 30,
    # Reduce-on-plateau of the validation macro-F1; the paper gives no settings, these are
    # PyTorch's `ReduceLROnPlateau` defaults.
    "plateau_factor": 0.1,
    "plateau_patience": 10,
    "cache_frames": False,  # keep decoded training frames in memory (small data only)
    "seed": 0,
}

PRESETS = {
    "paper": PAPER,
    # A tiny RegNet at 64 px over 32-frame sequences: trains from scratch on the default
    # demo data (`affectkit demo-data`) in about 2 minutes on 2 CPU cores.
    "cpu_demo": dict(
        PAPER,
        image_size=64,
        sequence_length=32,
        train_stride=8,  # overlapping training sequences: 4x as many from the demo's videos
        backbone_config={"depths": (1, 1, 1, 1), "widths": (16, 32, 48, 64),
                         "group_width": 8, "stem_width": 16},
        batch_size=4,
        epochs=20,
        plateau_patience=3,
        cache_frames=True,
    ),
}


# ----------------------------------------------------------------------------- model


def _check_config(config):
    for key in ("image_size", "sequence_length", "batch_size", "epochs"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config[{key!r}] must be an integer >= 1; got {value!r}.")
    if config["backbone_normalization"] not in BACKBONE_NORMALIZATIONS:
        raise ValueError(
            f"config['backbone_normalization'] must be one of {BACKBONE_NORMALIZATIONS}; got "
            f"{config['backbone_normalization']!r}."
        )
    if config.get("backbone_file"):
        if config.get("weights"):
            raise ValueError(
                "config: `weights` loads RegNet weights; a `backbone_file` holds its own "
                f"weights ({config['backbone_file']}). Give one or the other."
            )
    elif config.get("backbone_layer"):
        raise ValueError(
            f"config: backbone_layer={config['backbone_layer']!r} needs a `backbone_file` "
            "(the layer is looked up in that model file)."
        )


def build_frame_encoder(config):
    """The per-frame backbone of a config: `(N, size, size, 3)` -> `(N, D)` pooled features.

    RegNetY-1.6GF with average pooling (888-d) in the paper; `backbone_file` (+
    `backbone_layer`) uses any Keras image model file instead (a 4-D feature map is
    average-pooled).
    """
    size = config["image_size"]
    if config.get("backbone_file"):
        encoder = model_file_backbone(
            config["backbone_file"], layer=config.get("backbone_layer"),
            input_shape=(size, size, 3), trainable=config["train_backbone"],
        )
        rank = len(encoder.output.shape)
        if rank == 4:
            features = keras.layers.GlobalAveragePooling2D(name="frame_feature_pool")(encoder.output)
            encoder = keras.Model(encoder.input, features, name=encoder.name)
        elif rank != 2:
            raise ValueError(
                f"{config['backbone_file']}: the output of layer "
                f"{config.get('backbone_layer')!r} has shape {encoder.output.shape}; expected "
                "a feature map (batch, h, w, channels) or a feature vector (batch, channels)."
            )
        return encoder
    encoder = regnet.build_preset(
        config["backbone"], input_shape=(size, size, 3), pooling="avg",
        weights=config.get("weights"), **dict(config.get("backbone_config") or {}),
    )
    encoder.trainable = bool(config["train_backbone"])
    return encoder


def build_model(config, schema):
    """The network of Phan et al. 2022 (Fig. 2) from a config, backbone included.

    Input `frames`: `(batch, sequence_length, size, size, 3)` RGB in [0, 1]. The frames are
    folded into the batch for the backbone (its BatchNorm sees all frames of the batch, as
    the paper's reshape does), the `(batch * sequence_length, D)` features are unfolded to
    `(batch, sequence_length, D)`, and per frame [features, self-attention, transformer
    encoder] (3 D) go through Dropout and the Dense classifier.
    Output: `{"expr": (batch, sequence_length, classes)}` softmax probabilities (float32).
    """
    config = {**PAPER, **config}
    _check_config(config)
    schema = get_schema(schema)
    size, length = int(config["image_size"]), int(config["sequence_length"])

    # === Layers ===
    encoder = build_frame_encoder(config)
    width = int(encoder.output.shape[-1])
    normalization = (regnet.regnet_preprocessing()
                     if config["backbone_normalization"] == "imagenet" else None)
    attention = SelfAttentionBlock(
        num_heads=config["attention_heads"], head_dim=config["attention_head_dim"],
        dropout=config["attention_dropout"], name="attention",
    )
    transformer = TransformerEncoder(
        num_layers=config["transformer_layers"], num_heads=config["transformer_heads"],
        head_dim=config["transformer_head_dim"], mlp_dim=config["transformer_mlp_dim"],
        dropout=config["transformer_dropout"], activation=config["transformer_activation"],
        norm_first=True, positional_encoding=False, name="transformer_encoder",
    )
    concatenate = keras.layers.Concatenate(name="representation")
    dropout = keras.layers.Dropout(config["dropout"], name="dropout")
    classifier = keras.layers.Dense(schema.num_expressions, activation="softmax",
                                    dtype="float32", name="expr")

    # === Functional graph ===
    frames = keras.Input((length, size, size, 3), name="frames")
    images = keras.ops.reshape(frames, (-1, size, size, 3))  # (batch * length, ...)
    if normalization is not None:
        images = normalization(images)
    features = encoder(images)
    sequence = keras.ops.reshape(features, (-1, length, width))  # (batch, length, D)
    x = concatenate([sequence, attention(sequence), transformer(sequence)])
    outputs = {"expr": classifier(dropout(x))}
    return keras.Model(frames, outputs, name="phan2022_regnet_transformer")


def build_losses(config):
    """The paper's loss: focal loss (alpha, gamma) with label smoothing, -1 labels masked."""
    config = {**PAPER, **config}
    return {
        "expr": affect_losses.MaskedFocalLoss(
            alpha=config["focal_alpha"], gamma=config["focal_gamma"],
            label_smoothing=config["label_smoothing"],
        )
    }


def build_optimizer(config):
    """AdamW with the config's learning rate and weight decay."""
    config = {**PAPER, **config}
    return keras.optimizers.AdamW(config["learning_rate"], weight_decay=config["weight_decay"])


# ----------------------------------------------------------------------------- data


def sequence_segments(index, length, frames="labelled", stride=None):
    """Chunks of `length` frames of each video, `stride` apart (default: non-overlapping),
    for training or prediction.

    Args:
        index: `FrameIndex` (rows sorted by video then frame).
        length: frames per chunk (64 in the paper).
        frames: `"labelled"`: only the frames with an expression label and their own image
            (the paper's training and validation sequences; the chunks skip the other
            frames); `"all"`: every frame with an image to read, its own or the nearest
            one of an index built with `fill_missing_images=True` (for prediction).
        stride: frames between chunk starts, 1..length; default `length`.
    Returns:
        `(kept, segments)`: the `FrameIndex` of the kept rows, and the
        `affectkit.data.sequences.Segments` over its rows. The last chunk of a video is
        padded by repeating the video's last kept row (`segments.valid` False there).
    """
    if frames not in FRAME_SELECTIONS:
        raise ValueError(f"Unknown frames={frames!r}: expected one of {FRAME_SELECTIONS}.")
    table = index.frames
    if frames == "labelled":
        keep = (table["expr"].to_numpy() != index.schema.expr_missing) & table["has_image"].to_numpy(bool)
    else:
        keep = table["image_frame"].to_numpy() >= 0
    if not keep.any():
        what = "an expression label and an image" if frames == "labelled" else "an image"
        raise ValueError(
            f"None of the {len(table)} frames of the index (root {index.root}) has {what}; "
            "expected some (check the annotation folders and cropped_aligned/)."
        )
    kept = FrameIndex(table[keep].reset_index(drop=True), index.schema, index.root)
    return kept, segment_indices(kept.frames["video"].to_numpy(), length, stride)


def sequence_labels(kept, segments):
    """Expression labels `(n_segments, length)` int32 of `sequence_segments` output, -1 on
    padded steps (the labels `sequence_dataset` yields, in its unshuffled order)."""
    return segment_labels(kept, segments, tasks=TASKS, missing_images="fill")["expr"]


def _image_size_differs(paths, size, count=16):
    """Whether any of up to `count` JPEGs spread over `paths` is not `size` x `size`."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).astype(int))
    for i in picks:
        try:
            shape = tf.io.extract_jpeg_shape(tf.io.read_file(paths[i])).numpy()
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
            raise ValueError(f"Cannot read image {paths[i]!r}: expected a JPEG file "
                             f"({type(error).__name__}).") from error
        if tuple(shape[:2]) != (size, size):
            return True
    return False


def sequence_dataset(kept, segments, image_size, batch_size, training=False, shuffle_seed=0,
                     cache=False, with_labels=True):
    """Batches of frame sequences `(B, length, size, size, 3)` float32 in [0, 1].

    Each element decodes one chunk's JPEGs (tf.data, in parallel); training shuffles the
    chunks (seeded, a new order each epoch). With `with_labels`, elements are
    `(frames, {"expr": (B, length) int32})`, -1 on padded steps.

    Args:
        kept, segments: from `sequence_segments`.
        image_size: frame size; frames of another size are resized (antialiased bilinear).
        batch_size: sequences per batch.
        training: shuffle the chunks.
        shuffle_seed: seed of the shuffle.
        cache: keep the decoded uint8 chunks in memory after the first epoch.
        with_labels: yield labels too.
    """
    paths = kept.frames["image_aligned"].to_numpy().astype(str)
    missing = np.flatnonzero(paths == "")
    if len(missing):
        row = kept.frames.iloc[missing[0]]
        raise ValueError(f"Video {row['video']!r} frame {row['frame']}: no image path; expected "
                         "only frames with an image (use `sequence_segments`).")
    size = int(image_size)
    resize = _image_size_differs(paths, size)
    path_table = tf.constant(paths)
    row_table = tf.constant(segments.rows)
    label_table = tf.constant(sequence_labels(kept, segments))
    frame_spec = tf.TensorSpec((size, size, 3), tf.uint8)

    def load_frame(path):
        if resize:
            return decode_frame(path, (size, size))
        return tf.ensure_shape(decode_frame(path), (size, size, 3))

    def load_segment(segment):
        frames = tf.map_fn(load_frame, tf.gather(path_table, tf.gather(row_table, segment)),
                           fn_output_signature=frame_spec, parallel_iterations=4)
        return frames, segment

    def finish(frames, segment_ids):
        images = normalize_images(frames, "unit")
        if not with_labels:
            return images
        return images, {"expr": tf.gather(label_table, segment_ids)}

    autotune = tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(len(segments))
    if cache:
        ds = ds.map(load_segment, num_parallel_calls=autotune, deterministic=True).cache()
    if training:
        ds = ds.shuffle(len(segments), seed=shuffle_seed, reshuffle_each_iteration=True)
    if not cache:
        ds = ds.map(load_segment, num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(batch_size).map(finish, num_parallel_calls=autotune, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(autotune)


def predict_frames(model, index, batch_size=16, frames="all"):
    """Per-frame expression probabilities of a sequence model over a `FrameIndex`.

    The index's frames are cut into non-overlapping chunks of the model's sequence length
    (`sequence_segments`), each chunk predicted once, and the padded steps dropped.

    Args:
        model: a network of `build_model` (or its reloaded `model.keras`).
        index: `FrameIndex`; build it with `fill_missing_images=True` to predict frames
            without an image from their nearest frame.
        batch_size: sequences per batch.
        frames: `"all"` or `"labelled"`, as in `sequence_segments`.
    Returns:
        `(kept, {"expr": (len(kept), classes)})`: the predicted rows (a `FrameIndex`) and
        their probabilities, row for row.
    """
    shape = model.input_shape
    if len(shape) != 5 or shape[1] is None or shape[2] != shape[3]:
        raise ValueError(f"predict_frames: expected a model with input (batch, length, size, "
                         f"size, 3); this one takes {shape}.")
    kept, segments = sequence_segments(index, int(shape[1]), frames)
    ds = sequence_dataset(kept, segments, int(shape[2]), batch_size, with_labels=False)
    outputs = predict_arrays(model, ds, TASKS)["expr"]
    probabilities = np.zeros((len(kept.frames), outputs.shape[-1]), np.float32)
    probabilities[segments.rows[segments.valid]] = outputs[segments.valid]
    return kept, {"expr": probabilities}


# ----------------------------------------------------------------------------- training


def train(config, data, out):
    """Trains into `out`; returns the run's report (validation, chance baselines, official)."""
    config = {**PAPER, **config}
    _check_config(config)
    schema = get_schema(config["edition"])
    keras.utils.set_random_seed(config["seed"])
    length = config["sequence_length"]
    train_kept, train_segments = sequence_segments(
        FrameIndex.from_affwild2(data, schema, "train", tasks=TASKS), length,
        stride=config["train_stride"])
    val_kept, val_segments = sequence_segments(
        FrameIndex.from_affwild2(data, schema, "val", tasks=TASKS), length)
    common = dict(image_size=config["image_size"], batch_size=config["batch_size"])
    train_ds = sequence_dataset(train_kept, train_segments, training=True,
                                shuffle_seed=config["seed"], cache=config["cache_frames"],
                                **common)
    val_ds = sequence_dataset(val_kept, val_segments, cache=config["cache_frames"], **common)
    val_labels = {"expr": sequence_labels(val_kept, val_segments)}
    print(f"Sequences of {length} frames: {len(train_segments)} for training "
          f"({int(train_segments.valid.sum())} frames), {len(val_segments)} for validation "
          f"({int(val_segments.valid.sum())} frames).")

    trainer = Trainer.from_config(out, schema, TASKS, config)
    with trainer.strategy.scope():
        network = build_model(config, schema)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_score", mode="max", factor=config["plateau_factor"],
        patience=config["plateau_patience"], verbose=1,
    )
    trainer.run_stage(
        "train", network, build_losses(config), lambda: build_optimizer(config),
        train_ds, val_ds, val_labels, epochs=config["epochs"], extra_callbacks=[plateau],
    )
    train_labels = train_kept.frames["expr"].to_numpy(np.int64)
    baselines = {"expr": metrics.chance_baselines("expr", schema, train_labels, val_labels["expr"])}
    scores = trainer.finish(network, val_ds, val_labels, baselines=baselines,
                            extra={"config": config})
    official = _write_and_score_official(out, data, schema, config)
    return {"validation": scores, "chance_baselines": baselines, "official": official}


def _write_and_score_official(out, data, schema, config):
    """Predicts every annotated validation frame with the best model (frames without an
    image from their nearest frame), writes the official files and scores them."""
    best = keras.saving.load_model(os.path.join(out, "model.keras"))
    index = FrameIndex.from_affwild2(data, schema, "val", tasks=TASKS, fill_missing_images=True)
    kept, outputs = predict_frames(best, index, batch_size=config["batch_size"])
    written = write_official_predictions(os.path.join(out, "predictions"), kept.frames,
                                         outputs, schema)
    gt = os.path.join(data, annotation_dir(schema, "expr", "val"))
    return {"expr": evaluate_files(schema, "expr", gt, written["expr"])}


def _print_report(report, schema):
    model = report["validation"]["expr_score"]
    base = report["chance_baselines"]["expr"]["score"]
    print(f"\nValidation, {schema.edition} (best epoch), labelled frames with images")
    print(f"  {'':<34s} {'model':>7s}   {'majority class':>14s}")
    print(f"  {f'EXPR macro-F1 ({schema.num_expressions} classes)':<34s} {model:7.4f}   {base:14.4f}")
    acc, base_acc = report["validation"]["expr_accuracy"], report["chance_baselines"]["expr"]["accuracy"]
    print(f"  {'EXPR accuracy':<34s} {acc:7.4f}   {base_acc:14.4f}")
    print("\nOfficial prediction files (every annotated frame) scored by affectkit.evaluation:")
    print(format_scores(report["official"]["expr"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Aff-Wild2 root (or `affectkit demo-data` output)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--edition", help="ABAW edition of the labels (default: the preset's, "
                                          "abaw3: 8 classes)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="sequences per batch")
    parser.add_argument("--sequence-length", type=int, help="frames per sequence (paper: 64)")
    parser.add_argument("--image-size", type=int, help="frame size in pixels (paper: 112)")
    parser.add_argument("--backbone", choices=sorted(regnet.PRESETS),
                        help="RegNet preset (paper: regnety_1.6gf)")
    parser.add_argument("--backbone-file", help="a Keras image model file (.keras/.h5) to use "
                                                "as the per-frame backbone instead of RegNet")
    parser.add_argument("--backbone-layer", help="layer of --backbone-file whose output is the "
                                                 "frame feature ('sub/layer' inside nested models)")
    parser.add_argument("--backbone-normalization", choices=("imagenet", "none"),
                        help="input normalisation before the backbone (default imagenet)")
    parser.add_argument("--weights", help="local RegNet weights file (e.g. ImageNet)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="train only the sequence blocks and the classifier")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)

    config = copy.deepcopy(PRESETS[args.preset])
    for key in ("edition", "epochs", "batch_size", "sequence_length", "image_size", "backbone",
                "backbone_file", "backbone_layer", "weights"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.backbone_normalization is not None:
        config["backbone_normalization"] = (None if args.backbone_normalization == "none"
                                            else args.backbone_normalization)
    config["train_backbone"] = not args.freeze_backbone
    config["mixed_precision"] = args.mixed_precision
    config["jit_compile"] = args.jit_compile
    report = train(config, args.data, args.out)
    _print_report(report, get_schema(config["edition"]))
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, history.csv, plots, "
          "predictions/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
