"""liu2023_multimodal_ensemble: multimodal features, LSTM/transformer encoders and a vote
(Liu et al., ABAW5 2023).

What the paper adds to the shared run:

- `prepare()`: the per-frame feature caches, concatenated per frame (given as
  `features.caches`, or built here: a visual extractor over the aligned faces and log-mel
  audio), checked against the width of the preset's `model.feature_inputs`.
- The model's standardisation adapted to the training features (`feature_normalization`).
- The encoder (`encoder`): the preset's segment transformer (eq. 3, padded frames masked
  by the `valid` input), or the LSTM whose state is carried from one segment of a video to
  the next (eq. 2: the model override `temporal={"type": "segment_lstm", **lstm}`).
- Training through `SegmentStream`, a training-time wrapper (never saved; `model.keras` is
  the plain `AffectModel`): it carries the LSTM state from batch to batch over parallel
  streams of segments and runs the network twice for the R-Drop loss (eq. 4).
- 5-fold cross-validation (`fold`, paper Table 2, `affectkit.data.splits`): folds 1-4 hold
  out a part of the training videos and train on the rest plus the official validation
  videos (their `metrics.json` says `"trained_on_official_validation": true`), fold 5 is
  the official split; `fold: "all"` trains every fold into `RUN_DIR/fold_k`.

Every run writes the official validation predictions (`predictions/validation.csv`). The
paper's final system, the per-frame majority vote of several runs (Table 3), is the
library's ensemble, which leaves out the runs trained on the validation videos:
`affectkit.evaluation.ensembles.ensemble([run_a, run_b, cv_folder], out, method="vote")`.
Network and settings: `affectkit.presets.liu2023_multimodal_ensemble`.
"""

import copy
import hashlib
import json
import os

import keras
import numpy as np
from keras import ops

from affectkit import losses
from affectkit.data.pipeline import label_arrays
from affectkit.data.splits import fold_indexes
from affectkit.evaluation.scoring import write_scores
from affectkit.features.audio import AUDIO_FEATURES, extract_audio_features
from affectkit.features.cache import FeatureCache, MappedFeatures
from affectkit.features.extraction import backbone_feature_model, extract_features
from affectkit.models.backbones import model_file_backbone
from affectkit.recipes.base import Recipe
from affectkit.training import run_directory

ENCODERS = ("transformer", "lstm")
NUM_FOLDS = 5  # folds 1-4 from the training videos, fold 5 the official validation set
VALIDATION_FOLD = NUM_FOLDS
MODEL_FILES = (".keras", ".h5", ".hdf5")
VIEW = "aligned"  # the faces the visual features are extracted from


class MultimodalEnsembleRecipe(Recipe):
    """Liu et al., "Multi-modal Expression Recognition with Ensemble Method" (ABAW5,
    CVPRW 2023)."""

    name = "liu2023_multimodal_ensemble"

    def __init__(self, config, data, out, preset=None):
        super().__init__(config, data, out, preset=preset)
        encoder = self.config["encoder"]
        if encoder not in ENCODERS:
            raise ValueError(f"encoder {encoder!r}: expected one of {ENCODERS}.")
        if encoder == "lstm":
            self.model_config["temporal"] = {"type": "segment_lstm", **self.config["lstm"]}
        elif self.model_config["temporal"]["type"] != "segment_transformer":
            raise ValueError(f"encoder 'transformer' with model.temporal of type "
                             f"{self.model_config['temporal']['type']!r}: expected "
                             "'segment_transformer' (or encoder 'lstm').")
        fold = self.config["fold"]
        if fold != "all" and fold not in range(1, NUM_FOLDS + 1):
            raise ValueError(f"fold {fold!r}: expected 1..{NUM_FOLDS} or 'all'.")
        self.feature_caches = None
        self.train_features = None
        self.folds = None
        self.split_videos = None

    # ------------------------------------------------------------------ features

    def prepare(self):
        """The feature caches (`features.caches`, or built by `build_caches`), whose
        concatenated width must be the preset's `model.feature_inputs`."""
        settings = self.config["features"]
        paths = settings.get("caches")
        if not paths:
            cache_dir = settings.get("cache_dir") or os.path.join(self.out, "features")
            with run_directory.exclusive(cache_dir):  # runs may share the folder
                paths = self.build_caches(cache_dir)
        self.feature_caches = [FeatureCache(path) for path in paths]
        name, shape, _ = self.segment_input()
        width = sum(sum(cache.dims.values()) for cache in self.feature_caches)
        if width != shape[-1]:
            widths = ", ".join(f"{cache.path} ({sum(cache.dims.values())})"
                               for cache in self.feature_caches)
            raise ValueError(
                f"The feature caches give {width}-d frames ({widths}), but the preset's "
                f"model.feature_inputs.{name} is {shape}: expected caches of that width, or "
                f"--set 'model.feature_inputs={{\"{name}\": [null, {width}]}}'.")
        keras.utils.set_random_seed(self.config["seed"])  # the same model, caches built or not

    @classmethod
    def shared_preparation(cls, config, folder):
        """The caches built in `folder/features_<digest>`, named by what decides them (the
        `features` settings and the seed, which draws a random visual extractor), unless
        the config gives its caches or cache folder."""
        features = config["features"]
        if features.get("caches") or features.get("cache_dir"):
            return config
        digest = run_directory.config_digest({"features": features, "seed": config["seed"]})
        config = copy.deepcopy(config)
        config["features"]["cache_dir"] = os.path.join(folder, f"features_{digest}")
        return config

    def build_caches(self, cache_dir):
        """Builds (or finishes) the caches of `config["features"]` for every video of the
        data: the visual one (`visual`), then one per entry of `audio`; returns their
        folders in that order."""
        settings = self.config["features"]
        visual = settings.get("visual")
        if not visual:
            raise ValueError(
                "features.caches is null and features.visual is null: expected feature cache "
                "folders (--set 'features.caches=[\"CACHE\", ...]') or a visual extractor to "
                "build one from the frames (--set 'features.visual={\"model\": "
                "\"regnetx_400mf\", \"image_size\": 112, \"weights\": null, \"layer\": null, "
                "\"hyperparameters\": {}}').")
        model, description = visual_feature_model(visual, self.config["seed"])
        size = int(visual.get("image_size") or 112)
        paths = self.cache_paths(cache_dir)
        extract_features(model, self.data, paths[0], image_size=size, view=VIEW,
                         normalization="unit", description=description)
        for audio, path in zip(settings.get("audio") or (), paths[1:]):
            extract_audio_features(self.data, path, features=audio)
        return paths

    def cache_paths(self, cache_dir):
        """The folders `build_caches` writes in `cache_dir`: the visual cache, then one per
        entry of `features.audio`."""
        settings = self.config["features"]
        visual = settings["visual"]
        size = int(visual.get("image_size") or 112)
        paths = [os.path.join(cache_dir, f"visual_{visual_cache_tag(visual)}_{size}px")]
        for audio in settings.get("audio") or ():
            if audio not in AUDIO_FEATURES:
                raise ValueError(f"features.audio {audio!r}: expected some of {AUDIO_FEATURES}.")
            paths.append(os.path.join(cache_dir, f"audio_{audio}"))
        return paths

    def live_feature_sources(self):
        """The caches' features computed live for a new video (`features.live.live_source`):
        the visual extractor rebuilt from its cache's manifest, the audio features of the
        video's sound track, concatenated in the caches' order."""
        from affectkit.features.live import live_source

        settings = self.config["features"]
        paths = settings.get("caches")
        if not paths:
            cache_dir = settings.get("cache_dir") or os.path.join(self.out, "features")
            paths = self.cache_paths(cache_dir)
        path = os.path.join(self.out, "metrics.json")
        if os.path.isfile(path) and not all(os.path.isdir(p) for p in paths):
            with open(path) as f:  # the absolute folders the run read
                paths = list(json.load(f).get("feature_caches") or paths)
        return [live_source(FeatureCache(p)) for p in paths]

    # ------------------------------------------------------------------ folds

    def run(self, network=None, callbacks=()):
        """One fold (`config["fold"]`), or with `"all"` every fold into `out/fold_k` and
        their summary, `out/cross_validation.json` (returned)."""
        if self.config["fold"] != "all":
            return super().run(network, callbacks)
        if network is not None:
            raise ValueError("fold 'all' trains five networks; a given network trains one "
                             "fold: expected fold 1..5.")
        run_directory.write_run_config(self.out, self.name, self.preset, self.config,
                                       self.data, self.schema)
        keras.utils.set_random_seed(self.config["seed"])
        self.prepare()  # the caches are built once, for every fold
        reports = {}
        for fold in range(1, NUM_FOLDS + 1):
            held_out = "official validation set" if fold == VALIDATION_FOLD else "training videos"
            print(f"\n=== fold {fold} of {NUM_FOLDS} (held out: {held_out})")
            config = copy.deepcopy(self.config)
            config["fold"] = fold
            config["features"]["caches"] = [cache.path for cache in self.feature_caches]
            out = os.path.join(self.out, f"fold_{fold}")
            reports[fold] = type(self)(config, self.data, out, preset=self.preset).run()
        summary = {str(fold): {"f1": report["validation"]["expr_f1"],
                               "chance_f1": report["chance_baselines"]["expr"]["f1"]}
                   for fold, report in reports.items()}
        summary["average"] = {key: float(np.mean([row[key] for row in summary.values()]))
                              for key in ("f1", "chance_f1")}
        write_scores(os.path.join(self.out, "cross_validation.json"), summary)
        print(f"\n{NUM_FOLDS}-fold cross-validation, held-out macro-F1 (paper Table 2)")
        for fold, row in summary.items():
            print(f"  {'fold ' + fold if fold != 'average' else fold:>8s}: {row['f1']:.4f}   "
                  f"chance {row['chance_f1']:.4f}")
        return summary

    def run_indexes(self):
        """The fold's frames (`affectkit.data.splits.fold_indexes`): every annotated frame,
        those without an image reading the nearest frame's features (section 2.1)."""
        train, val = self.index("train", True), self.index("val", True)
        train, held_out, self.folds = fold_indexes(train, val, self.config["fold"], NUM_FOLDS,
                                                   self.config["fold_seed"])
        self.split_videos = {"train": train.videos, "held_out": held_out.videos}
        return train, held_out

    # ------------------------------------------------------------------ training

    def datasets(self, train_index, val_index):
        # Read on demand: Aff-Wild2's 2 M training frames of the paper's 3670-d features
        # would be 30 GB as a matrix; the segment datasets map them too above 1 GiB.
        self.train_features = MappedFeatures(train_index, self.feature_caches, view=VIEW)
        return self.segment_datasets(train_index, val_index, self.feature_caches)

    def train_labels(self, train_index):
        return label_arrays(train_index, self.tasks, missing_images="fill", view=VIEW)

    def adapt_model(self, network):
        """The standardisation adapted to the training features (of `datasets`)."""
        if self.model_config.get("normalization") == "standardize":
            if self.train_features is None:
                raise RuntimeError(f"{self.name}: adapt_model adapts the standardisation to "
                                   "the training features of datasets(); expected a "
                                   "datasets() call first (as Recipe.run makes it).")
            features, self.train_features = self.train_features, None
            network.get_layer("feature_normalization").adapt(feature_chunks(features))

    def training_model(self, network):
        return SegmentStream(network, self.config["data"]["batch_size"],
                             rdrop=self.config["losses"]["rdrop"])

    def build_losses(self, stage, train_labels):
        """R-Drop (eq. 4, `losses.rdrop_alpha`, its KL averaged or summed over the labelled
        frames by `losses.rdrop_kl_reduction`, default `"mean"`); masked cross-entropy with
        `losses.rdrop` off. Labels -1 (and padding) are left out."""
        settings = self.config["losses"]
        if settings["rdrop"]:
            return {"expr": losses.RDropLoss(
                alpha=settings["rdrop_alpha"],
                kl_reduction=settings.get("rdrop_kl_reduction", "mean"))}
        return {"expr": losses.MaskedCategoricalCrossentropy()}

    def predict_frames(self, model, index):
        return self.predict_segments(model, index, self.feature_caches)

    def extra_report(self, best, val_index):
        fold = self.config["fold"]
        return {
            "encoder": self.config["encoder"],
            "fold": fold,
            # Folds 1-4 train on the official validation videos: the library's ensemble
            # leaves such runs out of any combination scored on those videos.
            "trained_on_official_validation": fold != VALIDATION_FOLD,
            "folds": None if self.folds is None else {str(k): v for k, v in self.folds.items()},
            "train_videos": self.split_videos["train"],
            "held_out_videos": self.split_videos["held_out"],
            "feature_caches": {cache.path: cache.dims for cache in self.feature_caches},
        }


class SegmentStream(keras.Model):
    """A features `AffectModel` as it trains over segments (not saved itself).

    In training, on batches of `Recipe.segment_dataset(..., training=True)`:
    - a `segment_lstm` network starts each batch slot from the final state of the same slot
      in the previous batch, kept in non-trainable variables and reset where
      `starts_video` is True: with `order="streams"` each video is one pass of the LSTM,
      segment after segment (Liu et al. 2023, eq. 2). No gradient crosses a segment
      boundary (truncated back-propagation, as detaching the state in PyTorch); with R-Drop
      the first pass's state is carried.
    - with `rdrop`, the network runs twice (different dropout) and `expr` is the two passes
      stacked on axis -2, `(batch, time, 2, classes)`, as `RDropLoss` expects.

    In inference it is the network itself, on the network's own inputs. `save` writes the
    plain network, so the run's `model.keras` holds only the `AffectModel`.

    Args:
        network: the `AffectModel` (a `segment_lstm` or `segment_transformer` block).
        batch_size: segments per training batch (LSTM: the number of streams); every
            training batch must have exactly this many (`order="streams"` guarantees it).
        rdrop: run the network twice in training.

    Example:
    >>> stream = SegmentStream(network, batch_size=8)
    >>> MultiTaskModel(stream, {"expr": RDropLoss(alpha=5.0)}).fit(train_ds)
    """

    def __init__(self, network, batch_size, rdrop=True, **kwargs):
        super().__init__(**kwargs)
        # Layers.
        self.network = network
        self.stateful = isinstance(network.input, dict) and "state_h" in network.input
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
        if not training:
            return self.network(inputs, training=False)
        if self.stateful:
            if "starts_video" not in inputs:
                raise ValueError("SegmentStream (LSTM): expected training inputs with "
                                 "`starts_video`, as Recipe.segment_dataset(..., "
                                 "training=True) gives them.")
            carry = 1.0 - ops.cast(ops.reshape(inputs["starts_video"], (-1, 1)), "float32")
            network_inputs = {key: value for key, value in inputs.items()
                              if key != "starts_video"}
            network_inputs.update(state_h=self.state_h * carry, state_c=self.state_c * carry)
        else:
            network_inputs = inputs
        outputs = self.network(network_inputs, training=True)
        if self.stateful:
            self.state_h.assign(ops.cast(outputs["state_h"], "float32"))
            self.state_c.assign(ops.cast(outputs["state_c"], "float32"))
        expr = outputs["expr"]
        if self.rdrop:
            second = self.network(network_inputs, training=True)["expr"]
            expr = ops.stack([expr, second], axis=-2)
        return {"expr": expr}

    def save(self, filepath, *args, **kwargs):
        """Saves the plain network (not this wrapper) to `filepath`."""
        return self.network.save(filepath, *args, **kwargs)


def feature_chunks(features, rows=65536):
    """The rows of a feature matrix or `MappedFeatures` as a dataset of `(rows, 1, dim)`
    chunks, for `Normalization.adapt`, which accumulates its mean and variance over them:
    exact, in the memory of one chunk."""
    import tensorflow as tf

    n, dim = features.shape

    def chunks():
        for start in range(0, n, rows):
            yield np.asarray(features[np.arange(start, min(start + rows, n))],
                             np.float32)[:, None, :]

    return tf.data.Dataset.from_generator(
        chunks, output_signature=tf.TensorSpec((None, 1, dim), tf.float32))


# ------------------------------------------------------------------------- visual caches


def visual_feature_model(visual, seed=0):
    """`(model, description)`: the visual extractor of `config["features"]["visual"]`, RGB
    in [0, 1] -> one vector per frame.

    `visual["model"]` is a backbone name (`hyperparameters`, `weights` a local file or None;
    random-initialised backbones are seeded with `seed`, so reproducible) or a Keras model
    file cut at `layer`; `image_size` the side of the frames fed to it (default 112).
    """
    name = visual["model"]
    size = int(visual.get("image_size") or 112)
    if name.lower().endswith(MODEL_FILES):
        model = model_file_backbone(name, layer=visual.get("layer"), input_shape=(size, size, 3),
                                    trainable=False)
        return model, {"name": model.name, "file": os.path.abspath(name),
                       "layer": visual.get("layer")}
    weights = visual.get("weights")
    hyperparameters = dict(visual.get("hyperparameters") or {})
    keras.utils.set_random_seed(seed)
    model = backbone_feature_model(name, size, weights=weights, **hyperparameters)
    description = {"name": model.name, "backbone": name, "hyperparameters": hyperparameters,
                   "weights": None if weights is None else os.path.abspath(weights),
                   "seed": None if weights is not None else int(seed)}
    return model, json.loads(json.dumps(description))


def visual_cache_tag(visual):
    """The cache folder name part of a visual extractor: the backbone name (with a digest of
    its hyperparameters when it has any), or the model file's stem and layer."""
    name = visual["model"]
    if name.lower().endswith(MODEL_FILES):
        return f"{os.path.splitext(os.path.basename(name))[0]}_{visual.get('layer') or 'output'}"
    if visual.get("hyperparameters"):
        digest = hashlib.sha1(json.dumps(visual["hyperparameters"], sort_keys=True).encode())
        return f"{name}_custom{digest.hexdigest()[:8]}"
    return name
