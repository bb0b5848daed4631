"""`Recipe`: the run template every paper's recipe shares.

    config.json -> seed -> prepare (e.g. feature caches) -> train/val FrameIndex
      -> datasets (by the model's input kind) -> model (AffectModel preset + overrides)
      -> stages (Trainer: resumable, ABAW validation each epoch, best epoch kept)
      -> model.keras, metrics.json (validation, chance baselines), plots
      -> predictions/validation.csv (every annotated validation frame) -> official files,
         scored by affectkit.evaluation

A paper's recipe is a subclass that says only what the paper adds: its losses, its stages'
extras (callbacks), its data preparation, and, for inputs other than frames, how datasets
and per-frame predictions are made. Its presets are plain dicts in `affectkit.presets`.
"""

import abc
import copy
import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from affectkit import metrics, presets
from affectkit.data.affwild2 import AnnotationNotFoundError, FrameIndex
from affectkit.data.clips import clip_dataset, clip_labels, clip_segments, predict_clip_frames
from affectkit.data.pipeline import frame_dataset, label_arrays
from affectkit.data.sequences import (segment_dataset, segment_indices, segment_labels,
                                      video_runs, window_dataset)
from affectkit.labels import get_schema
from affectkit.models.affect_model import AffectModel
from affectkit.models.backbones.pretrained import conversion_command, resolve_weights
from affectkit.training import run_directory
from affectkit.training.optimizers import build_optimizer
from affectkit.training.trainer import Trainer, predict_arrays

ANNOTATIONS = ("per_task", "mtl", "auto")
# Temporal blocks of a model over segments of cached features (`segment_dataset`).
SEGMENT_BLOCKS = ("segment_transformer", "segment_lstm")


class Recipe(abc.ABC):
    """One training run of a paper's system into a run directory.

    Args:
        config: the resolved run config (a preset of `affectkit.presets` with overrides,
            `presets.resolve`).
        data: the Aff-Wild2 folder (or `affectkit demo-data` output).
        out: the run directory.
        preset: the preset's name, recorded in `config.json`.

    Subclasses set `name` (the recipe and preset name; the paper's title is the first line
    of its preset file, `presets.title(name)`), define `build_losses` and override, where the paper needs it, `prepare`, `datasets`,
    `stage_callbacks`, `predict_frames`, `extra_report`, `run_indexes` (other frames than
    the official splits) and `training_model` (a training-time wrapper of the network).

    Example:
    >>> config = presets.resolve("zhang2020_mtanet", "cpu_demo")
    >>> report = get_recipe("zhang2020_mtanet")(config, "demo/data", "runs/m").run()
    """

    name = None
    # Where the config names the backbone's pretrained weights (dotted).
    weights_key = "weights"
    # The tasks whose annotations make up the index (`index`); None: the model's tasks.
    index_tasks = None

    def __init__(self, config, data, out, preset=None):
        self.config = copy.deepcopy(config)
        self.data = data
        self.out = out
        self.preset = preset
        self.schema = get_schema(self.config["edition"])
        self.model_config = presets.merge(presets.model_preset(self.name),
                                          self.config.get("model") or {})
        self.model_config["schema"] = self.schema.edition
        self.tasks = tuple(t for t in self.model_config["tasks"] if t in ("va", "expr", "au"))

    # ------------------------------------------------------------------ what papers add

    @abc.abstractmethod
    def build_losses(self, stage, train_labels):
        """dict output -> masked Keras loss for `stage` (all outputs of the model)."""

    def prepare(self):
        """Work before training (e.g. building feature caches); returns nothing."""

    def stage_callbacks(self, stage):
        """Extra Keras callbacks of a stage (e.g. reduce-on-plateau)."""
        return []

    def extra_report(self, best, val_index):
        """Recipe-specific entries of the report (and files, e.g. attention maps)."""
        return {}

    def adapt_model(self, network):
        """Fits the network's data-dependent layers (e.g. a feature standardisation) to the
        training data, after `datasets`; nothing by default."""

    @classmethod
    def shared_preparation(cls, config, folder):
        """`config` with the outputs of `prepare` (e.g. feature caches) placed in `folder`,
        under names that say what they hold, so that runs of one search that would
        prepare the same thing share it; unchanged by default (nothing to share)."""
        return config

    def training_model(self, network):
        """The model the stages train and validate each epoch: `network` itself, or a
        training-time wrapper of it (e.g. one that carries a recurrent state from batch to
        batch). A wrapper's `save` must write the plain `network`: `model.keras` holds it."""
        return network

    def run_indexes(self):
        """`(train_index, val_index)`: the frames the run trains on and picks its best
        epoch on; the official splits by default (a cross-validation fold holds out others).
        The official files are those of the official validation set (`write_official`).
        Clips over every frame (`data.clip_frames: all`) read indexes whose frames without
        an image point at the nearest one."""
        fill = (self.model_config.get("input_kind") == "clips"
                and self.config["data"].get("clip_frames", "all") == "all")
        return (self.index("train", fill_missing_images=fill),
                self.index("val", fill_missing_images=fill))

    # ------------------------------------------------------------------ shared steps

    def index(self, split, fill_missing_images=False):
        """The `FrameIndex` of a split: per-task folders, the MTL file, or (`auto`) the MTL
        file where the edition has one, else the folders (`config["data"]["annotations"]`)."""
        annotations = self.config["data"].get("annotations", "per_task")
        if annotations not in ANNOTATIONS:
            raise ValueError(f"data.annotations {annotations!r}: expected one of {ANNOTATIONS}.")
        if annotations in ("auto", "mtl"):
            try:
                return FrameIndex.from_mtl(self.data, self.schema, split,
                                           fill_missing_images=fill_missing_images)
            except AnnotationNotFoundError:
                if annotations == "mtl":
                    raise
        return FrameIndex.from_affwild2(self.data, self.schema, split,
                                        tasks=self.index_tasks or self.tasks,
                                        fill_missing_images=fill_missing_images)

    def datasets(self, train_index, val_index):
        """`(train_ds, val_ds, val_labels)`; frames of the model's view by default, clips
        for `input_kind="clips"` (`clip_datasets`)."""
        if self.model_config.get("input_kind") == "clips":
            return self.clip_datasets(train_index, val_index)
        data = self.config["data"]
        common = dict(tasks=self.tasks, batch_size=data["batch_size"],
                      image_size=self.model_config["image_size"],
                      view=self.model_config.get("view", "aligned"), normalization="unit")
        train_ds = frame_dataset(train_index, training=True, shuffle_seed=self.config["seed"],
                                 augment=data.get("augment"), **common)
        val_ds = frame_dataset(val_index, **common)
        return train_ds, val_ds, label_arrays(val_index, self.tasks, view=common["view"])

    def predict_frames(self, model, index):
        """Outputs (dict task -> array) for every row of `index` (built with
        `fill_missing_images=True`, so frames without an image read the nearest one)."""
        data = self.config["data"]
        if self.model_config.get("input_kind") == "clips":
            return predict_clip_frames(model, index, self.tasks, batch_size=data["batch_size"],
                                       view=self.model_config.get("view", "aligned"))
        dataset = frame_dataset(index, tasks=self.tasks, batch_size=data["batch_size"],
                                image_size=self.model_config["image_size"],
                                view=self.model_config.get("view", "aligned"),
                                normalization="unit", missing_images="fill")
        return predict_arrays(model, dataset, self.tasks)

    def clip_datasets(self, train_index, val_index):
        """`datasets` of a clip model: clips of `sequence_length` consecutive frames of the
        model's view (`affectkit.data.clips`), labels `(n_clips, length, ...)`.

        `config["data"]`: `batch_size` (clips), `clip_frames` (`"all"`, the default: every
        frame, frames without their own image reading the nearest frame's, from the indexes
        `run_indexes` reads with `fill_missing_images=True`; or `"labelled"`: frames with
        their own image and a label), `train_stride` (frames between training clip starts;
        default: no overlap) and `cache_frames` (decoded clips kept in memory).
        """
        data = self.config["data"]
        frames = data.get("clip_frames", "all")
        view = self.model_config.get("view", "aligned")
        length = self.model_config["sequence_length"]
        cut = dict(frames=frames, tasks=self.tasks, view=view)
        train = clip_segments(train_index, length, stride=data.get("train_stride"), **cut)
        val = clip_segments(val_index, length, **cut)
        print(f"Clips of {length} frames ({frames}): {len(train.segments)} for training "
              f"({int(train.segments.valid.sum())} frames), {len(val.segments)} for "
              f"validation ({int(val.segments.valid.sum())} frames).")
        common = dict(tasks=self.tasks, image_size=self.model_config["image_size"],
                      batch_size=data["batch_size"], view=view,
                      cache=data.get("cache_frames", False))
        train_ds = clip_dataset(train, training=True, shuffle_seed=self.config["seed"],
                                augment=data.get("augment"), **common)
        val_ds = clip_dataset(val, **common)
        return train_ds, val_ds, clip_labels(val, self.tasks, view)

    def window_inputs(self):
        """`(window, windowed)` of a model over windows of cached features (`input_kind
        "features"`): its `feature_inputs` of shape `[s, D]` are windows of `s` frames, the
        target frame and its `s - 1` previous ones; those of shape `[D]` the target frame's."""
        shapes = self.model_config.get("feature_inputs") or {}
        windowed = {name: shape[0] for name, shape in shapes.items() if len(shape) == 2}
        sizes = set(windowed.values())
        if (self.model_config.get("input_kind") != "features" or not shapes or len(sizes) > 1
                or None in sizes or any(len(shape) not in (1, 2) for shape in shapes.values())):
            raise ValueError(f"{self.name}: windows of features need input_kind 'features' and "
                             "feature_inputs of shapes [D] (target frame) or [s, D] (window; "
                             f"one s for all); got {shapes}.")
        return (sizes.pop() if sizes else 1), tuple(windowed)

    def _window_dataset(self, index, sources, **options):
        """`window_dataset` of the model's inputs (`window_inputs`) from `sources`, checked
        against the widths of `feature_inputs`."""
        window, windowed = self.window_inputs()
        shapes = self.model_config["feature_inputs"]
        if set(sources) != set(shapes):
            raise ValueError(f"{self.name}: feature sources for {sorted(sources)}; the model's "
                             f"feature_inputs are {sorted(shapes)}.")
        dataset = window_dataset(index, sources, tasks=self.tasks, window=window,
                                 windowed=windowed, batch_size=self.config["data"]["batch_size"],
                                 view=self.model_config.get("view", "aligned"), **options)
        for name, spec in dataset.element_spec[0].items():
            if spec.shape[-1] != shapes[name][-1]:
                raise ValueError(
                    f"{self.name}: feature input {name!r} is {spec.shape[-1]}-d in its source "
                    f"({sources[name]!r}), but model.feature_inputs.{name} is {shapes[name]}; "
                    "expected the features the preset's model was configured for.")
        return dataset

    def window_datasets(self, train_index, val_index, sources):
        """`datasets` of a model over windows of cached per-frame features
        (`affectkit.data.sequences.window_dataset`): `sources` maps each of its
        `feature_inputs` to a feature source (e.g. `(FeatureCache, [name])`). Training
        targets are drawn class-balanced with `config["data"]["balance"] = "expr"`."""
        train_ds = self._window_dataset(train_index, sources, training=True,
                                        shuffle_seed=self.config["seed"],
                                        balance=self.config["data"].get("balance"))
        val_ds = self._window_dataset(val_index, sources)
        view = self.model_config.get("view", "aligned")
        return train_ds, val_ds, label_arrays(val_index, self.tasks, view=view)

    def predict_windows(self, model, index, sources):
        """`predict_frames` of a model over windows of cached features: every row of
        `index` (frames without stored features take the nearest frame's)."""
        dataset = self._window_dataset(index, sources, missing_images="fill")
        return predict_arrays(model, dataset, self.tasks)

    def segment_input(self):
        """`(name, shape, stateful)` of a model over segments of cached features
        (`input_kind "features"`, a temporal block of `SEGMENT_BLOCKS`): its one feature
        input, of shape `[T, D]`, and whether it carries an LSTM state (`segment_lstm`)."""
        shapes = self.model_config.get("feature_inputs") or {}
        temporal = (self.model_config.get("temporal") or {}).get("type")
        if (self.model_config.get("input_kind") != "features" or len(shapes) != 1
                or temporal not in SEGMENT_BLOCKS or len(next(iter(shapes.values()))) != 2):
            raise ValueError(f"{self.name}: segments of features need input_kind 'features', "
                             "one feature input of shape [T, D] and a temporal block of type "
                             f"{SEGMENT_BLOCKS}; got feature_inputs {shapes}, temporal "
                             f"{temporal!r}.")
        name, shape = next(iter(shapes.items()))
        return name, list(shape), temporal == "segment_lstm"

    def segment_dataset(self, index, sources, training=False):
        """`(dataset, segments)`: a model over segments of cached per-frame features
        (`segment_input`) on every row of `index`.

        Segments are cut by frame number (`affectkit.data.sequences.segment_dataset`);
        frames without an image of their own read the nearest frame's features and keep
        their labels; padding is labelled missing. `sources`: one feature source (caches,
        a list of them concatenated, or a matrix aligned to the rows), checked against the
        width of `feature_inputs`. `config["data"]`: `segment_length`, `batch_size`,
        `train_stride` (frames between training segment starts; default no overlap).

        - training: `x` the model's inputs (`valid` masks the padding) over segments in a
          seeded shuffle; a `segment_lstm` model gets the consecutive segments of each run
          in parallel streams (`order="streams"`) and `starts_video` in place of its state
          inputs, which the training model carries (`training_model`). `segments` is None.
        - evaluation: the model's own inputs over segments in video order; a `segment_lstm`
          model reads each run (a video, split at gaps in its frame numbers) whole from a
          zero state, which is exactly its state carried from segment to segment, with as
          many runs per batch as fit in the frames of a training batch. `segments` are in
          the dataset's order.
        """
        name, shape, stateful = self.segment_input()
        data = self.config["data"]
        length, batch_size = int(data["segment_length"]), int(data["batch_size"])
        order, stride = "video", None
        videos = index.frames["video"].to_numpy()
        frames = index.frames["frame"].to_numpy(np.int64)
        if training:
            order = "streams" if stateful else "shuffle"
            stride = None if stateful else data.get("train_stride")
        elif stateful:
            starts, stops = video_runs(videos, frames)
            longest = int((stops - starts).max()) if len(starts) else 1
            batch_size = max(1, batch_size * length // longest)
            length = longest
        dataset = segment_dataset(index, {name: sources}, tasks=self.tasks, length=length,
                                  stride=stride, batch_size=batch_size, order=order,
                                  shuffle_seed=self.config["seed"], missing_images="fill",
                                  view=self.model_config.get("view", "aligned"), with_info=True)
        width = dataset.element_spec[0][name].shape[-1]
        if width != shape[-1]:
            raise ValueError(f"{self.name}: the feature sources give {width}-d frames, but "
                             f"model.feature_inputs.{name} is {shape}; expected the features "
                             "the preset's model was configured for.")
        units = int(self.model_config["temporal"]["units"]) if stateful else 0

        def model_inputs(x, y):
            inputs = {name: x[name]}
            if not stateful:
                inputs["valid"] = x["valid"]
            elif training:
                inputs["starts_video"] = x["starts_video"]
            else:
                zeros = tf.zeros((tf.shape(x[name])[0], units), x[name].dtype)
                inputs.update(state_h=zeros, state_c=zeros)
            return inputs, y

        dataset = dataset.map(model_inputs, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True).prefetch(tf.data.AUTOTUNE)
        return dataset, (None if training else segment_indices(videos, frames, length))

    def segment_datasets(self, train_index, val_index, sources, train_sources=None):
        """`datasets` of a model over segments of cached features (`segment_dataset`);
        `train_sources` (default `sources`) are the training frames' features, e.g. their
        matrix already in memory. Labels are `(n_segments, length)`."""
        train_ds, _ = self.segment_dataset(
            train_index, sources if train_sources is None else train_sources, training=True)
        val_ds, segments = self.segment_dataset(val_index, sources)
        labels = segment_labels(val_index, segments, self.tasks, missing_images="fill",
                                view=self.model_config.get("view", "aligned"))
        return train_ds, val_ds, labels

    def predict_segments(self, model, index, sources):
        """`predict_frames` of a model over segments of cached features: every row of
        `index`, from the one segment (or whole run) that holds it."""
        dataset, segments = self.segment_dataset(index, sources)
        return segments.to_rows(predict_arrays(model, dataset, self.tasks), len(index.frames))

    # ------------------------------------------------------------------ new videos

    def live_feature_sources(self):
        """The feature sources of a model of cached features, computed live for a new
        video (`affectkit.features.live`, read by `affectkit predict`), in the form
        `datasets` reads them from the caches. Recipes of such models define it."""
        raise ValueError(f"{self.name}: its model reads cached features, and the recipe "
                         "does not say how to compute them for a new video.")

    def temporal_layout(self):
        """How a model of cached features reads a face track, frame after frame:
        `{"kind": "segments", "length": data.segment_length}` (a segment block; the model's
        `valid` or state inputs say the rest) or `{"kind": "windows", "window": s,
        "windowed": inputs}` (`window_inputs`)."""
        if (self.model_config.get("temporal") or {}).get("type") in SEGMENT_BLOCKS:
            self.segment_input()  # checks the inputs
            return {"kind": "segments", "length": int(self.config["data"]["segment_length"])}
        window, windowed = self.window_inputs()
        return {"kind": "windows", "window": window, "windowed": windowed}

    def recorded_path(self, key, default):
        """A path the run's `metrics.json` records at `key` (absolute, as it was written),
        else `default` (where the config puts it, e.g. inside the run directory): the
        first that exists, else `default`."""
        path = os.path.join(self.out, "metrics.json")
        recorded = None
        if os.path.isfile(path):
            with open(path) as f:
                recorded = json.load(f).get(key)
        if recorded and os.path.exists(recorded) and not os.path.exists(default):
            return recorded
        return default

    def named_weights(self, config):
        """The pretrained weights `config` names at `weights_key` (a name, a path or None)."""
        for part in self.weights_key.split("."):
            config = (config or {}).get(part)
        return config

    def check_weights(self):
        """Raises unless the config's `weights` (a name or a path) is a local file; warns
        when the `paper` preset, which names the weights the paper fine-tunes, trains its
        backbone from random initialisation instead."""
        key = self.weights_key
        weights = self.named_weights(self.config)
        resolve_weights(weights, key)
        expected = self.named_weights(presets.resolve(self.name, "paper"))
        if self.preset == "paper" and expected and not weights:
            warnings.warn(
                f"{self.name} paper preset with {key}=null: the backbone trains from random "
                f"initialisation; the paper fine-tunes pretrained weights ({expected!r}: "
                f"{conversion_command(expected)}).", stacklevel=2)

    def check_frozen_layers(self, network):
        """Refuses a network whose backbone has frozen layers but no pretrained weights:
        those layers would stay randomly initialised."""
        backbone = getattr(network, "backbone", None)
        frozen = [layer.name for layer in getattr(backbone, "layers", [])
                  if layer.weights and not layer.trainable]
        if frozen and not self.config.get("weights"):
            raise ValueError(
                f"{self.name}: {len(frozen)} backbone layers are frozen ({frozen[0]}, ...), "
                "but weights is null: they would stay randomly initialised. Expected "
                "weights (a local file or a name, see `affectkit convert-weights`), or "
                "settings that train every backbone layer (e.g. trainable_from=null).")

    def build_model(self):
        """The run's `AffectModel`: the paper's preset with the run's overrides."""
        overrides = {k: v for k, v in self.model_config.items() if k != "schema"}
        return AffectModel.from_preset(self.name, schema=self.schema,
                                       weights=self.config.get("weights"), **overrides)

    def train_labels(self, train_index):
        """Training labels of every output task (for chance baselines and loss weights)."""
        return label_arrays(train_index, self.tasks, view=self.model_config.get("view", "aligned"))

    def chance_baselines(self, train_labels, val_labels):
        """`metrics.chance_baselines` per task, and for their sum when all three are here."""
        baselines = {task: metrics.chance_baselines(task, self.schema, train_labels[task],
                                                    val_labels[task])
                     for task in self.tasks}
        if len(self.tasks) == 3:
            baselines["mtl"] = metrics.chance_baselines("mtl", self.schema, train_labels,
                                                        val_labels)
        return baselines

    def run(self, network=None, callbacks=()):
        """Trains every stage into the run directory; returns the report (also in
        `metrics.json`).

        Args:
            network: the network to train (e.g. a tuner's, built by `build_model` and
                perhaps holding an earlier trial's weights); default `build_model()`.
            callbacks: Keras callbacks added to every stage's.
        """
        from affectkit.evaluation import reports

        run_directory.write_run_config(self.out, self.name, self.preset, self.config,
                                       self.data, self.schema)
        self.check_weights()
        keras.utils.set_random_seed(self.config["seed"])
        self.prepare()
        train_index, val_index = self.run_indexes()
        train_ds, val_ds, val_labels = self.datasets(train_index, val_index)
        train_labels = self.train_labels(train_index)

        trainer = Trainer.from_config(self.out, self.schema, self.tasks, self.config["run"])
        with trainer.strategy.scope():
            if network is None:
                network = self.build_model()
            self.check_frozen_layers(network)
            self.adapt_model(network)
            trained = self.training_model(network)
        for stage, settings in self.config["stages"].items():
            trainer.run_stage(
                stage, trained, self.build_losses(stage, train_labels),
                lambda settings=settings: build_optimizer(settings["optimizer"]),
                train_ds, val_ds, val_labels, epochs=settings["epochs"],
                loss_weights=settings.get("loss_weights"),
                uncertainty=settings.get("uncertainty", False),
                extra_callbacks=[*self.stage_callbacks(stage), *callbacks],
            )
        baselines = self.chance_baselines(train_labels, val_labels)
        trainer.finish(network, val_ds, val_labels, baselines=baselines,
                       extra={"recipe": self.name, "preset": self.preset})
        best = keras.saving.load_model(os.path.join(self.out, "model.keras"))
        extra = {"official": self.write_official(best), **self.extra_report(best, val_index)}
        report = trainer.update_report(extra)
        print(reports.format_report(report, self.schema))
        return report

    def write_official(self, model):
        """Predicts every annotated validation frame, writes `predictions/validation.csv`
        and the official files, and scores those with `affectkit.evaluation`."""
        from affectkit.evaluation import ensembles

        index = self.index("val", fill_missing_images=True)
        outputs = self.predict_frames(model, index)
        frames = index.frames[["video", "frame"]]
        return ensembles.write_and_score(self.out, frames, outputs, self.schema, index.sources)

