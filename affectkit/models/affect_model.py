"""`AffectModel`: backbone -> neck -> temporal block -> heads, one composable multi-task model.

Every paper's network is a preset of it (`AffectModel.from_preset(name)`, plain dicts in
`affectkit.presets`), and new models are built from the same parts:

    images    `image` (B, H, W, 3) -> normalisation -> backbone -> neck -> heads
    clips     `frames` (B, T, H, W, 3) -> frames folded into the batch -> normalisation
              -> backbone -> neck -> unfolded (B, T, D) -> temporal block -> per-frame heads
    features  named per-frame inputs (a feature cache) -> [standardisation] -> neck
              -> temporal block -> heads

Inputs are RGB in [0, 1] (images, clips): the model normalises them the way its backbone's
weights expect. Outputs are a dict keyed by task (`va`, `expr`, `au`, `va_vector`) in the
label schema's order and sizes, plus what a temporal block carries (`state_h`, `state_c`).
The label schema, the input kind, the view and the input size are part of the config, so a
reloaded `model.keras` says what it predicts and what it reads (`label_schema(model)`).
"""

import copy

import keras

from affectkit.labels import get_schema
from affectkit.models import backbones
from affectkit.models.layers.fusion import FusionBlock
from affectkit.models.layers.frames import FoldFrames, UnfoldFrames
from affectkit.models.layers.heads import MLPHead, PerTokenClassifier
from affectkit.models.layers.necks import AvgMaxNeck, RegionTokenNeck
from affectkit.models.layers.recurrent import SegmentLSTM
from affectkit.models.layers.temporal import ConcatAttentionTransformer, StatBiLSTMFusion
from affectkit.models.layers.transformer import TransformerEncoder

INPUT_KINDS = ("images", "clips", "features")
VIEWS = ("aligned", "cropped")
TASKS = ("va", "expr", "au", "va_vector")
# Block types of the `neck`, `temporal` and `heads` configs: {"type": NAME, **arguments}.
NECKS = {
    "avg_max": AvgMaxNeck,
    "region_tokens": RegionTokenNeck,
    "avg": keras.layers.GlobalAveragePooling2D,
    "fusion": FusionBlock,
}
TEMPORAL_BLOCKS = {
    "stat_bilstm": StatBiLSTMFusion,
    "concat_attention_transformer": ConcatAttentionTransformer,
    "segment_lstm": SegmentLSTM,  # takes and returns the state carried across segments
    "segment_transformer": TransformerEncoder,  # masked by the `valid` input
}
HEADS = {"mlp": MLPHead, "per_token": PerTokenClassifier}
STATE_OUTPUTS = ("state_h", "state_c")


def task_output(task, schema):
    """`(units, activation)` of a task's output: `va` 2 linear (valence, arousal), `expr`
    the schema's classes (softmax), `au` its AUs (sigmoid), `va_vector` Do et al.'s
    [a, v, m, |a - m|, |v - m|] (tanh)."""
    outputs = {"va": (2, None), "expr": (schema.num_expressions, "softmax"),
               "au": (schema.num_aus, "sigmoid"), "va_vector": (5, "tanh")}
    if task not in outputs:
        raise ValueError(f"Unknown task {task!r}: expected some of {TASKS}.")
    return outputs[task]


def _block(kind, registry, config, name):
    """The layer of a block config `{"type": NAME, **arguments}`."""
    config = dict(config)
    block_type = config.pop("type", None)
    if block_type not in registry:
        raise ValueError(f"{kind} type {block_type!r}: expected one of {sorted(registry)} "
                         f"(config {dict(config, type=block_type)}).")
    return registry[block_type](name=name, **config)


def _head_layers(task, schema, config):
    """`(input key, layers, outputs)` of one task's head config."""
    config = dict(config or {})
    head_type = config.pop("type", "mlp")
    source = config.pop("input", "features")
    units, activation = task_output(task, schema)
    if head_type not in HEADS:
        raise ValueError(f"head type {head_type!r} of task {task!r}: expected one of "
                         f"{sorted(HEADS)}.")
    config.setdefault("activation", activation)
    if config.pop("separate_dimensions", False):
        if task != "va":
            raise ValueError(f"`separate_dimensions` is for the va head; got it for {task!r}.")
        # Do et al. 2020: valence and arousal each from their own branch.
        branches = [HEADS[head_type](1, name=dimension, **config)
                    for dimension in schema.va_names]
        return source, branches, keras.layers.Concatenate(dtype="float32", name=task)
    return source, [HEADS[head_type](units, name=task, **config)], None


@keras.saving.register_keras_serializable(package="affectkit")
class AffectModel(keras.Model):
    """A multi-task affect model: backbone -> neck -> temporal block -> heads.

    Args:
        schema: ABAW edition (`"abaw1"` ... `"abaw6"`) or `LabelSchema`: head sizes and names.
        tasks: outputs, some of `("va", "expr", "au", "va_vector")`, in that order.
        input_kind: `"images"`, `"clips"` or `"features"` (see the module docstring).
        image_size: height and width of the input frames (images, clips).
        sequence_length: frames per clip (clips; required).
        feature_inputs: features: dict input name -> per-example shape, e.g.
            `{"features": [None, 480]}` (sequences of 480-d frames) or
            `{"feature": [2048], "probabilities": [16, 7]}`.
        view: the Aff-Wild2 view the model reads, `"aligned"` (`cropped_aligned`) or
            `"cropped"`. Recorded for prediction; it does not change the graph.
        normalization: images/clips: `"backbone"` (the normalisation the backbone preset's
            weights expect, or converted weights' own), `"imagenet"`, `"vggface2"`,
            `"inception"`, `"imagenet_caffe"` or None (the backbone takes [0, 1]);
            features: None or `"standardize"` (a `Normalization` layer,
            `feature_normalization`, to `adapt` to the training features).
        backbone: images/clips: `{"name": PRESET, **hyperparameters}` (see
            `affectkit.models.backbones.available_backbones()`), or a `keras.Model` taking
            normalised frames (e.g. `model_file_backbone(...)`).
        neck: `{"type": ..., **arguments}`, a type of `NECKS`, or None.
        temporal: `{"type": ..., **arguments}`, a type of `TEMPORAL_BLOCKS`, or None.
        heads: dict task -> head config `{"type": "mlp" | "per_token", "input": KEY,
            **arguments}`; `input` names the neck's output the head reads when the neck
            returns several (default `"features"`), and `"separate_dimensions": True`
            gives `va` a branch per dimension. Tasks without an entry get a plain
            `MLPHead`; entries of tasks not in `tasks` are ignored.
        **kwargs: `keras.Model` arguments (`name`).

    Example:

    ```python
    model = AffectModel(
        schema="abaw3", input_kind="images", image_size=112,
        backbone={"name": "regnety_400mf"},
        neck={"type": "avg_max", "width": 256},
        heads={"expr": {"hidden_units": [128], "dropout": 0.2}},
    )
    {k: v.shape for k, v in model.output.items()}
    # {"va": (None, 2), "expr": (None, 8), "au": (None, 12)}
    ```
    """

    def __init__(
        self,
        schema="abaw3",
        tasks=("va", "expr", "au"),
        input_kind="images",
        image_size=112,
        sequence_length=None,
        feature_inputs=None,
        view="aligned",
        normalization="backbone",
        backbone=None,
        neck=None,
        temporal=None,
        heads=None,
        **kwargs,
    ):
        schema = get_schema(schema)
        unknown = sorted(set(tasks) - set(TASKS))
        tasks = tuple(task for task in TASKS if task in tasks)
        if not tasks or unknown:
            raise ValueError(f"tasks: expected some of {TASKS}; got {unknown or 'none'}.")
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind {input_kind!r}: expected one of {INPUT_KINDS}.")
        if view not in VIEWS:
            raise ValueError(f"view {view!r}: expected one of {VIEWS}.")
        heads = copy.deepcopy(dict(heads or {}))

        # === Layers ===
        backbone_model, normalizer = None, None
        if input_kind == "features":
            if backbone is not None:
                raise ValueError("input_kind='features' reads cached features: expected "
                                 "backbone=None.")
            if normalization not in (None, "standardize"):
                raise ValueError(f"normalization {normalization!r} of features: expected "
                                 "None or 'standardize'.")
            if normalization:
                normalizer = keras.layers.Normalization(axis=-1, name="feature_normalization")
        else:
            backbone_model, backbone_config = self._backbone(backbone, int(image_size))
            kind = normalization
            if kind == "backbone":
                if not isinstance(backbone_config, dict) or "name" not in backbone_config:
                    raise ValueError("normalization='backbone' needs a backbone preset; a "
                                     "backbone model takes what it was trained on: give "
                                     "normalization explicitly ('imagenet', 'vggface2', "
                                     "'inception' or None).")
                kind = backbones.backbone_normalization(backbone_config["name"])
            normalizer = backbones.normalization_layer(kind, name="normalization")
        neck_layer = None if neck is None else _block("neck", NECKS, neck, "neck")
        temporal_layer = (None if temporal is None
                          else _block("temporal block", TEMPORAL_BLOCKS, temporal, "temporal"))
        head_specs = {task: _head_layers(task, schema, heads.get(task)) for task in tasks}

        # === Functional graph ===
        inputs, x = self._inputs(input_kind, int(image_size), sequence_length, feature_inputs)
        if input_kind == "features":
            if normalizer is not None:
                if isinstance(x, dict):
                    raise ValueError("normalization='standardize' needs a single feature "
                                     f"input; got {sorted(x)}.")
                x = normalizer(x)
            if neck_layer is not None:
                x = neck_layer(x)
        else:
            if input_kind == "clips":
                x = FoldFrames(name="fold_frames")(x)
            if normalizer is not None:
                x = normalizer(x)
            x = backbone_model(x)
            if neck_layer is not None:
                x = neck_layer(x)
            if input_kind == "clips":
                if isinstance(x, dict) or len(x.shape) != 2:
                    raise ValueError("input_kind='clips' needs a neck that gives one vector "
                                     "per frame (e.g. {'type': 'avg'}).")
                x = UnfoldFrames(int(sequence_length), name="unfold_frames")(x)
        outputs = {}
        if temporal_layer is not None:
            if input_kind == "images":
                raise ValueError("input_kind='images' has no time axis: expected "
                                 "temporal=None (use 'clips' or 'features').")
            block_type = temporal["type"]
            if block_type == "segment_lstm":
                for state in STATE_OUTPUTS:
                    inputs[state] = keras.Input((temporal_layer.units,), name=state)
                x, state_h, state_c = temporal_layer(
                    [x, inputs["state_h"], inputs["state_c"]])
                outputs.update(state_h=state_h, state_c=state_c)
            elif block_type == "segment_transformer":
                inputs["valid"] = keras.Input((x.shape[1],), dtype="bool", name="valid")
                x = temporal_layer(x, mask=inputs["valid"])
            else:
                x = temporal_layer(x)
        features = x if isinstance(x, dict) else {"features": x}
        for task, (source, layers, merge) in head_specs.items():
            if source not in features:
                raise ValueError(f"head {task!r} reads {source!r}, but the model gives "
                                 f"{sorted(features)}.")
            values = [layer(features[source]) for layer in layers]
            outputs[task] = values[0] if merge is None else merge(values)
        if len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone_model
        self.schema_edition = schema.edition
        self.tasks = tasks
        self.input_kind = input_kind
        self.image_size = int(image_size)
        self.sequence_length = None if sequence_length is None else int(sequence_length)
        self.feature_inputs = (None if feature_inputs is None
                               else {k: list(v) for k, v in feature_inputs.items()})
        self.view = view
        self.normalization = normalization
        self.backbone_config = None if input_kind == "features" else backbone_config
        self.neck_config = None if neck is None else dict(neck)
        self.temporal_config = None if temporal is None else dict(temporal)
        self.heads_config = heads

    @staticmethod
    def _backbone(backbone, image_size):
        """`(model, config)` of the backbone argument."""
        shape = (image_size, image_size, 3)
        if isinstance(backbone, keras.Model):
            return backbone, keras.saving.serialize_keras_object(backbone)
        if isinstance(backbone, dict) and "class_name" in backbone:
            return keras.saving.deserialize_keras_object(backbone), backbone
        if not isinstance(backbone, dict) or "name" not in backbone:
            raise ValueError(f"backbone {backbone!r}: expected {{'name': PRESET, "
                             "**hyperparameters}} or a keras.Model.")
        spec = dict(backbone)
        name = spec.pop("name")
        model = backbones.build_backbone(name, input_shape=shape, **spec)
        return model, dict(backbone)

    @staticmethod
    def _inputs(input_kind, image_size, sequence_length, feature_inputs):
        """`(inputs dict, x)` of an input kind."""
        if input_kind == "images":
            image = keras.Input((image_size, image_size, 3), name="image")
            return {"image": image}, image
        if input_kind == "clips":
            if not sequence_length:
                raise ValueError("input_kind='clips' needs sequence_length (frames per clip).")
            frames = keras.Input((int(sequence_length), image_size, image_size, 3),
                                 name="frames")
            return {"frames": frames}, frames
        if not feature_inputs:
            raise ValueError("input_kind='features' needs feature_inputs: a dict input name "
                             "-> shape, e.g. {'features': [None, 480]}.")
        inputs = {name: keras.Input(tuple(shape), name=name)
                  for name, shape in feature_inputs.items()}
        x = next(iter(inputs.values())) if len(inputs) == 1 else dict(inputs)
        return inputs, x

    @property
    def schema(self):
        """The `LabelSchema` of the outputs."""
        return get_schema(self.schema_edition)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "schema": self.schema_edition,
            "tasks": list(self.tasks),
            "input_kind": self.input_kind,
            "image_size": self.image_size,
            "sequence_length": self.sequence_length,
            "feature_inputs": self.feature_inputs,
            "view": self.view,
            "normalization": self.normalization,
            "backbone": self.backbone_config,
            "neck": self.neck_config,
            "temporal": self.temporal_config,
            "heads": self.heads_config,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, name, schema=None, weights=None, **overrides):
        """Builds a paper's network from its preset (`affectkit.presets`).

        Args:
            name: a recipe name, e.g. `"zhang2020_mtanet"` (`affectkit.presets.available()`).
            schema: ABAW edition or `LabelSchema`; default the preset's.
            weights: a local weights file for the backbone (nothing is downloaded), loaded
                as `affectkit.models.backbones.build_backbone` loads it, or the name of
                converted weights (`affectkit.models.backbones.pretrained`, e.g.
                `"vggface2_senet50"`); None: random.
                Weights from `affectkit convert-weights` bring their backbone layout and
                (with `normalization="backbone"`) their input normalisation.
            **overrides: AffectModel arguments; dicts are merged into the preset's
                (`backbone={"depths": [1, 1, 1, 1]}` keeps the preset's backbone name).

        Example:

        ```python
        model = AffectModel.from_preset("phan2022_regnet_transformer", image_size=64,
                                        backbone={"name": "regnety_400mf"})
        ```
        """
        from affectkit import presets
        from affectkit.models.backbones.pretrained import resolve_weights

        config = presets.merge(presets.model_preset(name), overrides)
        if schema is not None:
            config["schema"] = get_schema(schema).edition
        weights = resolve_weights(weights)
        if weights is not None:
            config = with_weights_layout(config, weights)
        model = cls(**config)
        if weights is not None:
            model.load_backbone_weights(weights)
        return model

    def load_backbone_weights(self, path):
        """Loads a local weights file into the backbone (as `build_backbone(weights=...)`
        reads it: Keras 3 `.weights.h5`, keras-vggface / keras-applications `.h5`)."""
        spec = dict(self.backbone_config or {})
        if "name" not in spec:
            raise ValueError(f"{self.name}: backbone weights load into a backbone preset; "
                             "this model's backbone is a model of its own.")
        name = spec.pop("name")
        source = backbones.build_backbone(name, input_shape=tuple(self.backbone.input_shape[1:]),
                                          weights=path, **spec)
        self.backbone.set_weights(source.get_weights())


def with_weights_layout(config, weights):
    """`config` with what converted weights need (`affectkit convert-weights` records it
    beside them): the backbone layout they fill (e.g. `stride_in_1x1`) and, where the
    config asks for the backbone's normalisation, the input normalisation they expect."""
    from affectkit.models.backbones.conversion import read_record

    record = read_record(weights)
    if record is None:
        return config
    backbone = dict(config.get("backbone") or {})
    wanted = record["backbone"].get("name")
    if backbone.get("name") != wanted:
        raise ValueError(f"{weights}: weights of a {wanted} backbone; the model's backbone is "
                         f"{backbone.get('name')!r}: expected backbone={{'name': '{wanted}'}}.")
    config = dict(config, backbone={**backbone, **record["backbone"]})
    if config.get("normalization", "backbone") == "backbone":
        config["normalization"] = record["normalization"]
    return config


def label_schema(model):
    """The `LabelSchema` a model predicts (an `AffectModel`, e.g. reloaded from `.keras`).

    Example:

    ```python
    model = keras.saving.load_model("runs/mtanet/model.keras")
    label_schema(model).expressions      # ("Neutral", "Anger", ...)
    ```
    """
    schema = getattr(model, "schema", None)
    if schema is None:
        raise ValueError(f"{getattr(model, 'name', model)!r} carries no label schema: expected "
                         "an affectkit AffectModel (e.g. a recipe's model.keras).")
    return schema
