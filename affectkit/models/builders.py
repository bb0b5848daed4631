"""Compose backbone + neck + heads into multi-output functional models.

Every model takes RGB images scaled to [0, 1] (what `affectkit.data.pipeline` yields with
`normalization="unit"`) and normalises them itself, so an exported `model.keras` needs no
preprocessing code beside it. Outputs are a dict keyed by task, in the schema's order.
"""

import keras

from affectkit.labels import get_schema
from affectkit.models.backbones import build_backbone, normalization_layer

TASKS = ("va", "expr", "au")


def task_heads(features, schema, tasks=TASKS, prefix=""):
    """One dense head per task on a shared feature vector (float32 under mixed precision).

    `va`: Dense(2), linear (valence, arousal); `expr`: Dense(C) softmax;
    `au`: Dense(K) sigmoid. Returns a dict task -> output tensor.
    """
    schema = get_schema(schema)
    heads = {
        "va": lambda: keras.layers.Dense(2, dtype="float32", name="va"),
        "expr": lambda: keras.layers.Dense(
            schema.num_expressions, activation="softmax", dtype="float32", name="expr"
        ),
        "au": lambda: keras.layers.Dense(
            schema.num_aus, activation="sigmoid", dtype="float32", name="au"
        ),
    }
    unknown = set(tasks) - set(heads)
    if unknown:
        raise ValueError(f"Unknown task(s) {sorted(unknown)}: expected some of {TASKS}.")
    return {task: heads[task]()(features) for task in TASKS if task in tasks}


def mtanet(
    schema,
    tasks=TASKS,
    input_shape=(112, 112, 3),
    backbone="senet50",
    backbone_config=None,
    neck_width=512,
    dropout=0.5,
    weights=None,
    name="mtanet",
):
    """MTANet (Zhang & Gu, ABAW 2020): a shared CNN encoder and one dense layer per task.

    Neck as in the authors' code: two branches over the backbone's final map, each
    Dropout -> 1x1 conv to `neck_width` -> LeakyReLU -> global average (one) or max
    (other) pooling, concatenated (1024-d at the paper's width).

    Args:
        schema: `LabelSchema` or edition name (head sizes).
        tasks: subset of `("va", "expr", "au")`.
        input_shape: image size; the paper uses 112x112 aligned faces.
        backbone: backbone preset name (`senet50`, `resnext50`, `resnext50_cbam`, ...).
        backbone_config: overrides of the preset's hyperparameters (depths, widths, ...).
        neck_width: channels of each neck branch (512 in the paper).
        dropout: dropout rate before each branch's 1x1 conv (0.5 in the paper).
        weights: a local backbone weights file (no downloads), or None.

    Example:
    >>> model = mtanet("abaw1", input_shape=(32, 32, 3),
    ...                backbone_config={"depths": (1, 1, 1, 1), "width_scale": 0.125})
    >>> sorted(model.output_shape)
    ['au', 'expr', 'va']
    """
    schema = get_schema(schema)
    # === Layers ===
    encoder = build_backbone(
        backbone, input_shape=input_shape, weights=weights, **(backbone_config or {})
    )
    branches = []
    for pooling in ("avg", "max"):
        pool = (
            keras.layers.GlobalAveragePooling2D(name="neck_avg_pool")
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D(name="neck_max_pool")
        )
        branches.append(
            [
                keras.layers.Dropout(dropout, name=f"neck_{pooling}_dropout"),
                keras.layers.Conv2D(neck_width, 1, name=f"neck_{pooling}_conv"),
                keras.layers.LeakyReLU(negative_slope=0.01, name=f"neck_{pooling}_lrelu"),
                pool,
            ]
        )

    # === Functional graph ===
    inputs = keras.Input(shape=input_shape, name="image")
    feature_map = encoder(normalization_layer("imagenet")(inputs))
    pooled = []
    for branch in branches:
        x = feature_map
        for layer in branch:
            x = layer(x)
        pooled.append(x)
    shared = keras.layers.Concatenate(name="neck_concat")(pooled)
    outputs = task_heads(shared, schema, tasks)
    return keras.Model(inputs, outputs, name=name)
