"""do2020_stat_temporal: the multi-task temporal statistical model (Do et al., ABAW 2020).

What the paper adds to the shared run, in two phases:

(a) `prepare()`: the face feature model (Sec. II-B, `do2020_face_model`: VGGFace2 ResNet-50
    with a new softmax, frozen before `conv4_1_1x1_reduce`), fine-tuned for expressions on
    class-balanced frames with online augmentation, and its feature cache (a 2048-d feature
    and the class probabilities of every frame), extracted once. Both live in the face
    directory (`face.dir`) and are reused by every variant that names the same one.
(b) The temporal model (Sec. II-C, Fig. 2), the preset's `AffectModel` on windows of the
    cache: the current frame's feature and the probabilities of it and its s - 1 previous
    frames. Its losses: cross-entropy, 1 - CCC of valence and arousal, and the MSE of the
    5-vector [a, v, m, |a - m|, |v - m|], weighted by eq. 4 (`loss_weights`).

Stacking without a leak (`face.training_outputs`, `face_model_plan`). A face model's outputs
for the frames it trained on are more confident and more often right than on any video it
has not seen, so a temporal model trained on them learns to trust inputs that validation
never gives it. The default, `"out_of_fold"`, cuts the training videos into `face.folds`
folds by video (`affectkit.data.splits.assign_folds`) and trains one face model per fold
on the other folds; the cached outputs of each fold's videos are its model's. The other
videos (validation, and any later prediction) are cut into as many shares, and share k's
outputs are fold k's model's too. So every input of the temporal model, in training and
in validation alike, is the output of one of the same K face models on a video that model
never saw: the same kind of input. Neither a face model refit on all training videos (the
refit of scikit-learn's `StackingClassifier`) nor the average of the fold models makes the
validation inputs: the first gives features in a space the temporal model never read
(measured on the cpu_demo preset, where the face models train from scratch: its features'
linear CKA with the fold models' is 0.77-0.85, and one temporal model scores VA CCC 0.03
and EXPR F1 0.19 on its validation inputs against 0.21 and 0.21 on the fold models'), the
second probabilities smoother than any one model's and features averaged across spaces. Every
face model starts from the run's seed (the same initial weights, the same pretrained ones
in the paper), so they differ only by the videos they learnt from. `"pretrained"` uses a
face model trained on other data (`face.model_file`, or `face.weights` of a whole
`do2020_face_model`) as it is, never trained here: no Aff-Wild2 frame trained it, so its
outputs on training videos are not leaky. `"in_sample"` (one face model, trained on all
training videos, for every frame) is the leak itself, kept to measure it and for runs
recorded before the key existed. `<face dir>/face_models.json` records the plan (which
model trained on and made the outputs of which videos) and the expression scores on
training frames of the temporal model's inputs and of a face model that trained on them
(`metrics.json`, `face_training_outputs`): their gap is the size of the leak.

Face directory: `fold_1/` ... `fold_K/`, each a face model's `Trainer` run directory with its
`face_model.keras` (in sample: those files at the top), `cache/` the outputs of every
video, `face_models.json`. Every model is trained once and reused (resumable, files written
whole).

The six models of Table I are the config's `variant` (a name of `VARIANTS` or 1-6), which
becomes model overrides. The paper's "Fusion" row is the library's ensemble of finished
runs: `affectkit.evaluation.ensembles.ensemble([run_2, run_6], out, method="average")`.
Every variant indexes the VA and EXPR annotations (ABAW1 tracks 1 and 2) alike, so any two
runs predict the same validation frames and fuse.

Differences from the paper: its face model learns expressions from AffectNet and RAF-DB
(Sec. III-A), not from Aff-Wild2, so its outputs on Aff-Wild2 training frames are not those
of frames it trained on: `face.training_outputs=pretrained` with such a model. Without that
data the face models here learn from Aff-Wild2's training videos, and the out-of-fold scheme
stands in for the outside data. The paper also fine-tunes the face model's last stage again
with the temporal model; here the face model stays frozen in phase (b), which lets phase (b)
read the cache (`tools/bench_temporal.py` measures the speed-up). Network and settings:
`affectkit.presets.do2020_stat_temporal`.
"""

import copy
import hashlib
import json
import os
from typing import NamedTuple

import keras
import numpy as np

from affectkit import losses, metrics, presets
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.pipeline import frame_dataset, frame_rows, label_arrays
from affectkit.data.splits import assign_folds
from affectkit.features.audio import source_video_name
from affectkit.features.cache import FeatureCache
from affectkit.features.extraction import extract_features
from affectkit.features.live import VisualFeatures
from affectkit.models.backbones.pretrained import resolve_weights
from affectkit.models.backbones.resnet_vggface2 import do2020_face_model
from affectkit.recipes.base import Recipe
from affectkit.training import run_directory
from affectkit.training.optimizers import build_optimizer
from affectkit.training.trainer import Trainer

FACE_MODEL_FILE = "face_model.keras"
FACE_MODELS_FILE = "face_models.json"  # the face directory's plan (`face_model_plan`)
FACE_OUTPUTS = ("feature", "probabilities")
# What makes the face outputs the temporal model trains on (`face.training_outputs`).
TRAINING_OUTPUTS = ("out_of_fold", "pretrained", "in_sample")
ALL_VIDEOS_MODEL = "all"  # in_sample: the face model of every training video and frame
PRETRAINED_MODEL = "pretrained"  # a face model trained on other data, used as it is
LEAK_CHECK_FRAMES = 4096  # training frames `training_frame_scores` scores at most


class Variant(NamedTuple):
    """One model of the paper's Table I."""

    number: int
    title: str
    stat: bool
    lstm: bool
    va: bool

    @property
    def temporal(self):
        """True when the model reads the previous frames ("Image, previous blocks")."""
        return self.stat or self.lstm


# Table I: "Frame" models have the STAT module, "with LSTM" ones STAT and the LSTM, "VA"
# ones add the arousal, valence and 5-vector branches.
VARIANTS = {
    "emotion_image": Variant(1, "Emotion Image", stat=False, lstm=False, va=False),
    "emotion_va_image": Variant(2, "Emotion VA Image", stat=False, lstm=False, va=True),
    "emotion_frame": Variant(3, "Emotion Frame", stat=True, lstm=False, va=False),
    "emotion_va_frame": Variant(4, "Emotion VA Frame", stat=True, lstm=False, va=True),
    "emotion_frame_lstm": Variant(5, "Emotion Frame with LSTM", stat=True, lstm=True, va=False),
    "emotion_va_frame_lstm": Variant(6, "Emotion VA Frame with LSTM", stat=True, lstm=True,
                                     va=True),
}


def get_variant(name):
    """The `Variant` of a name of `VARIANTS` or a Table I model number (1-6)."""
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower()
    if key.isdigit():
        key = {v.number: k for k, v in VARIANTS.items()}.get(int(key), key)
    if key not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}: expected one of {', '.join(VARIANTS)} or a "
                         "Table I model number 1-6.")
    return VARIANTS[key]


def variant_name(name):
    """The `VARIANTS` key of a variant (name, number or `Variant`)."""
    variant = get_variant(name)
    return next(k for k, v in VARIANTS.items() if v == variant)


def variant_overrides(variant, model_config, schema):
    """`AffectModel` overrides of a Table I model, over the model config they apply to.

    STAT and the LSTM switch on or off; the image models (neither) read a window of 1
    frame, the others the `s` of `feature_inputs.probabilities`; models without VA have
    only the expression head. The probabilities' class axis is the schema's.
    """
    variant = get_variant(variant)
    shape = list(model_config["feature_inputs"]["probabilities"])
    window = int(shape[0]) if variant.temporal else 1
    return {
        "tasks": ["va", "expr", "va_vector"] if variant.va else ["expr"],
        "temporal": {"stat": variant.stat, "lstm": variant.lstm},
        "feature_inputs": {"probabilities": [window, schema.num_expressions]},
    }


def eq4_loss_weights(weights, va):
    """Per-output weights of eq. 4, w1 CE + w2 (1 - CCC_a) + w3 (1 - CCC_v) + w4 MSE, from
    `{"expr": w1, "ccc": w2 = w3, "mse": w4}`.

    `MaskedCCCLoss` on `va` is ((1 - CCC_v) + (1 - CCC_a)) / 2, so its weight is 2 w2.
    """
    out = {"expr": float(weights["expr"])}
    if va:
        out.update(va=2.0 * float(weights["ccc"]), va_vector=float(weights["mse"]))
    return out


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
        raise ValueError(f"{index.root}: no training frame has both an expression label and "
                         "an image; phase (a) trains the face model on such frames.")
    labels = frames["expr"].to_numpy()[rows]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    probability = 1.0 / (len(counts) * counts[inverse])
    draws = np.random.default_rng(seed).choice(rows, size=len(rows), replace=True,
                                               p=probability / probability.sum())
    return FrameIndex(frames.iloc[np.sort(draws)].reset_index(drop=True), index.schema,
                      index.root)


def face_model_plan(training_outputs, train_videos, other_videos, folds=5, seed=0,
                    frame_counts=None):
    """Which face models phase (a) trains, on which training videos, and which videos'
    cached outputs each makes (`face.training_outputs`).

    - `"out_of_fold"`: the training videos cut into `folds` folds by video
      (`affectkit.data.splits.assign_folds`: seeded, balanced by `frame_counts`, the
      `_left` / `_right` tracks of a video in one fold), the other videos (validation,
      prediction) into as many shares alike; `fold_k` trains on the training videos
      outside fold k and makes the outputs of fold k's videos and of share k's.
    - `"in_sample"`: `all`, trained on every training video, makes every video's outputs,
      those of the videos it trained on too (the stacking leak; kept to measure it and for
      runs recorded before the fix).
    - `"pretrained"`: `pretrained`, trained on none of these videos, makes every video's.

    Args:
        training_outputs: one of `TRAINING_OUTPUTS`.
        train_videos: the training videos (the temporal model's).
        other_videos: every other video with cached outputs (the validation set's).
        folds: folds of `"out_of_fold"` (at least 2).
        seed: the fold shuffle's seed.
        frame_counts: dict video -> frames the folds are balanced by (default 1 each).
    Returns:
        dict model name -> `{"trained_on": sorted videos, "outputs_for": sorted videos}`;
        every video is in exactly one `outputs_for`, which (except `"in_sample"`) is
        disjoint from that model's `trained_on`.

    Example:
    >>> plan = face_model_plan("out_of_fold", ["a", "b", "c", "d"], ["v"], folds=2)
    >>> sorted(plan), sorted(v for entry in plan.values() for v in entry["outputs_for"])
    (['fold_1', 'fold_2'], ['a', 'b', 'c', 'd', 'v'])
    """
    train_videos = sorted(set(train_videos))
    other_videos = sorted(set(other_videos) - set(train_videos))
    if training_outputs == "in_sample":
        return {ALL_VIDEOS_MODEL: {"trained_on": train_videos,
                                   "outputs_for": sorted(train_videos + other_videos)}}
    if training_outputs == "pretrained":
        return {PRETRAINED_MODEL: {"trained_on": [],
                                   "outputs_for": sorted(train_videos + other_videos)}}
    if training_outputs != "out_of_fold":
        raise ValueError(f"face.training_outputs {training_outputs!r}: expected one of "
                         f"{', '.join(TRAINING_OUTPUTS)}.")
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"face.folds {folds!r}: out-of-fold outputs need at least 2 folds "
                         "(each fold's face model trains on the others).")
    cut = assign_folds(train_videos, frame_counts, folds, seed)
    # Fewer source videos than folds leave some shares empty.
    sources = len({source_video_name(video) for video in other_videos})
    shares = assign_folds(other_videos, frame_counts, min(folds, sources), seed) if sources else []
    shares += [[]] * (folds - len(shares))
    return {f"fold_{k}": {"trained_on": sorted(set(train_videos) - set(held_out)),
                          "outputs_for": sorted(held_out + share)}
            for k, (held_out, share) in enumerate(zip(cut, shares), start=1)}


class PlannedFaceModels(VisualFeatures):
    """The face models of a plan (`face_model_plan`) as the live source of their cache.

    A video the plan knows (its file named as an Aff-Wild2 video, or as the source of
    `_left` / `_right` tracks) gets the outputs of the model that made its cached ones, so
    its predictions are those of validation; any other video gets the first model's. Out
    of fold, every fold model makes inputs of the kind the temporal model trained on (its
    outputs on videos it never saw), so any one serves a video none of them saw.

    Args:
        load: model name -> the face model (`StatTemporalRecipe.load_face_model`).
        plan: the plan, model name -> `{"trained_on", "outputs_for"}`.
        view, image_size: the crops the face models read.
    """

    def __init__(self, load, plan, view, image_size):
        super().__init__(None, view, image_size, "unit")
        self.load, self.models, self.first = load, {}, sorted(plan)[0]
        self.made_by = {video: name for name, entry in plan.items()
                        for video in entry["outputs_for"]}
        self.start(None)

    def start(self, path):
        stem = os.path.splitext(os.path.basename(path))[0] if path else ""
        name = next((self.made_by[video] for video in (stem, stem + "_left")
                     if video in self.made_by), self.first)
        if name not in self.models:
            self.models[name] = self.load(name)
        self.model, self.model_name = self.models[name], name


def weights_fingerprint(model):
    """SHA-1 of a model's weights: the cache manifest names the exact face model."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def add_va_vector_label(x, y):
    """`va_vector` label: the (valence, arousal) labels, from which `VAVectorMSE` builds
    the 5-vector target."""
    return x, {**y, "va_vector": y["va"]}


class StatTemporalRecipe(Recipe):
    """Do, Nguyen-Quynh & Kim, "Affective Expression Analysis in-the-wild using Multi-Task
    Temporal Statistical Deep Learning Model" (FG 2020, ABAW 2020)."""

    name = "do2020_stat_temporal"
    weights_key = "face.weights"
    index_tasks = ("va", "expr")

    def __init__(self, config, data, out, preset=None):
        super().__init__(config, data, out, preset=preset)
        self.variant = get_variant(self.config["variant"])
        self.config["variant"] = variant_name(self.variant)
        self.model_config = presets.merge(
            self.model_config, variant_overrides(self.variant, self.model_config, self.schema))
        self.tasks = tuple(t for t in self.model_config["tasks"] if t in ("va", "expr", "au"))
        weights = eq4_loss_weights(self.config["loss_weights"], self.variant.va)
        for stage in self.config["stages"].values():
            stage["loss_weights"] = dict(weights)
        self.cache = None
        self.face_record = None  # `face_models.json` of the face directory (`face_outputs`)

    # ------------------------------------------------------------------ phase (b)

    def build_losses(self, stage, train_labels):
        """Masked cross-entropy (eq. 1); VA variants add 1 - CCC (eq. 2) and the 5-vector
        MSE (eq. 3)."""
        out = {"expr": losses.MaskedCategoricalCrossentropy()}
        if self.variant.va:
            out.update(va=losses.MaskedCCCLoss(), va_vector=losses.VAVectorMSE())
        return out

    def feature_sources(self):
        """The model's inputs from the feature cache (built by `prepare`)."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}: no feature cache yet; run prepare() first.")
        return {name: (self.cache, [name]) for name in FACE_OUTPUTS}

    def datasets(self, train_index, val_index):
        train_ds, val_ds, val_labels = self.window_datasets(train_index, val_index,
                                                            self.feature_sources())
        if self.variant.va:
            train_ds = train_ds.map(add_va_vector_label)
        return train_ds, val_ds, val_labels

    def predict_frames(self, model, index):
        return self.predict_windows(model, index, self.feature_sources())

    def live_feature_sources(self):
        """The temporal model's inputs on a new video: the outputs of a face model of the
        face directory's plan (`face_models.json`, `PlannedFaceModels`) on the model's
        view."""
        face_dir = self.recorded_path("face_dir", self.face_paths()[0])
        self.config["face"]["dir"] = face_dir
        record_path = os.path.join(face_dir, FACE_MODELS_FILE)
        if not os.path.isfile(record_path):
            raise FileNotFoundError(
                f"{record_path}: no such file; the temporal model reads the outputs of the "
                "face models of its run's face directory (phase a), expected there.")
        with open(record_path) as f:
            plan = json.load(f)["models"]
        source = PlannedFaceModels(self.load_face_model, plan,
                                   self.model_config.get("view", "aligned"),
                                   self.config["face"]["image_size"])
        return {output: (source, [output]) for output in FACE_OUTPUTS}

    def extra_report(self, best, val_index):
        """The variant, its window, the face model's softmax alone on the same frames, and
        what made the temporal model's training inputs (`face_training_outputs`)."""
        view = self.model_config.get("view", "aligned")
        targets = frame_rows(val_index, view=view)
        probabilities = self.cache.features_for(targets, ["probabilities"])["probabilities"]
        labels = label_arrays(val_index, ("expr",), view=view)["expr"]
        face_dir, _, _ = self.face_paths()
        return {
            "variant": variant_name(self.variant),
            "table_i_model": self.variant.number,
            "window": int(self.model_config["feature_inputs"]["probabilities"][0]),
            "face_model_softmax": {"expr": metrics.abaw_scores("expr", self.schema, labels,
                                                               probabilities)},
            "face_training_outputs": self.face_training_summary(),
            "face_dir": os.path.abspath(face_dir),
            "cache": self.cache.path,
        }

    def face_training_summary(self):
        """The face directory's record in short: the scheme, its folds, how many videos
        each face model trained on and made the outputs of, and the expression scores on
        training frames (`training_frame_scores`)."""
        record = self.face_record or {}
        return {
            "scheme": record.get("training_outputs"),
            "folds": record.get("folds"),
            "models": {name: {key: len(videos) for key, videos in entry.items()}
                       for name, entry in (record.get("models") or {}).items()},
            "train_frames_expr": record.get("train_frames_expr"),
            "record": os.path.join(os.path.abspath(self.face_paths()[0]), FACE_MODELS_FILE),
        }

    def run(self, network=None, callbacks=()):
        report = super().run(network, callbacks)
        face = report["face_model_softmax"]["expr"]
        print(f"\nTable I model {self.variant.number} ({self.variant.title}, s = "
              f"{report['window']}); the face model's softmax alone (phase a): EXPR score "
              f"{face['score']:.4f} (F1 {face['f1']:.4f}, accuracy {face['accuracy']:.4f})")
        outputs = report["face_training_outputs"]
        train = outputs["train_frames_expr"] or {}
        folds = f", {outputs['folds']} folds" if outputs["folds"] else ""
        line = (f"Training inputs: {outputs['scheme']}{folds}; the face model's EXPR F1 on "
                f"{train.get('frames', 0)} training frames: "
                f"{train['training_inputs']['f1']:.4f} for the temporal model's inputs")
        if outputs["scheme"] == "out_of_fold":
            line += (f", {train['in_sample']['f1']:.4f} from a face model that trained on them "
                     "(the leak avoided)")
        print(f"{line}; {face['f1']:.4f} on validation.")
        return report

    # ------------------------------------------------------------------ phase (a)

    def prepare(self):
        """Phase (a): the face models (loaded or trained) and their feature cache, built by
        one process at a time (runs may share a face directory)."""
        with run_directory.exclusive(self.face_paths()[0]):
            self.cache = self.face_outputs()
        # The temporal model starts from the same seed whether phase (a) ran now or not.
        keras.utils.set_random_seed(self.config["seed"])

    @classmethod
    def shared_preparation(cls, config, folder):
        """Phase (a) in `folder/face_<digest>`, named by what decides it (the `face`
        settings, `training_outputs` and `folds` among them, seed, edition and
        annotations), unless the config names its own face directory, model file or
        cache. A config without `face.training_outputs` (recorded before it existed) keeps
        the digest, and the in-sample face directory, it had."""
        face = config["face"]
        if face.get("dir") or face.get("model_file") or face.get("cache"):
            return config
        decided_by = {"face": face, "seed": config["seed"], "edition": config["edition"],
                      "annotations": config["data"].get("annotations")}
        config = copy.deepcopy(config)
        config["face"]["dir"] = os.path.join(folder,
                                             "face_" + run_directory.config_digest(decided_by))
        return config

    def training_outputs(self):
        """`face.training_outputs`, checked; `"in_sample"` when the config has none (what
        the runs recorded before the key existed trained on)."""
        scheme = self.config["face"].get("training_outputs", "in_sample")
        if scheme not in TRAINING_OUTPUTS:
            raise ValueError(f"face.training_outputs {scheme!r}: expected one of "
                             f"{', '.join(TRAINING_OUTPUTS)}.")
        if scheme == "out_of_fold" and self.config["face"].get("model_file"):
            raise ValueError(
                "face.model_file gives one trained face model, but face.training_outputs "
                "'out_of_fold' trains one per fold of the training videos. Expected "
                "--set face.training_outputs=pretrained when that model learnt from other data "
                "than these training videos, or face.training_outputs=in_sample (leaky: the "
                "temporal model then trains on the face model's outputs for its own training "
                "frames) when it learnt from them.")
        return scheme

    def face_paths(self):
        """`(face_dir, model_file, cache_dir)` of the config (defaults filled in)."""
        face = self.config["face"]
        face_dir = face.get("dir") or os.path.join(self.out, "face")
        model_file = face.get("model_file") or os.path.join(face_dir, FACE_MODEL_FILE)
        cache = face.get("cache") or os.path.join(
            os.path.dirname(os.path.abspath(model_file)), "cache")
        return face_dir, model_file, cache

    def face_model_paths(self, name):
        """`(run_dir, model_file)` of a face model of the plan: `all` in the face directory
        itself (or `face.model_file`), `fold_k` in its `fold_k` folder; `pretrained` has no
        run directory, and no file when it is built from `face.weights`."""
        face_dir, model_file, _ = self.face_paths()
        if name == ALL_VIDEOS_MODEL:
            return face_dir, model_file
        if name == PRETRAINED_MODEL:
            return None, self.config["face"].get("model_file")
        folder = os.path.join(face_dir, name)
        return folder, os.path.join(folder, FACE_MODEL_FILE)

    def face_plan(self, train_index, val_index):
        """`face_model_plan` of the config over the official splits; folds and shares are
        balanced by the frames that have an expression label and an image (what a face
        model trains on and is scored on)."""
        counts = {}
        for index in (train_index, val_index):
            frames = index.frames
            labelled = frames[(frames["expr"].to_numpy() >= 0)
                              & frames["has_image"].to_numpy(bool)]
            counts.update(labelled.groupby("video").size().to_dict())
        return face_model_plan(self.training_outputs(), train_index.videos, val_index.videos,
                               folds=self.config["face"].get("folds", 5),
                               seed=self.config["seed"], frame_counts=counts)

    def face_outputs(self):
        """Phase (a): the face models of the plan (`face_plan`), each loaded or trained, and
        the cache of the outputs each makes for its videos; returns the `FeatureCache`.

        The plan is recorded in `<face dir>/face_models.json` before any model trains, and
        a face directory planned otherwise raises (a fold model trained on other videos
        could otherwise make the outputs of videos it trained on). After the cache, the
        record gains each model's weights fingerprint and the expression scores of the
        cached outputs on the training frames (`training_frame_scores`)."""
        face_dir, _, cache_dir = self.face_paths()
        scheme = self.training_outputs()
        indexes = {"train": self.index("train"), "val": self.index("val")}
        plan = self.face_plan(indexes["train"], indexes["val"])
        planned = {"training_outputs": scheme,
                   "folds": int(self.config["face"].get("folds", 5))
                   if scheme == "out_of_fold" else None,
                   "seed": self.config["seed"], "models": plan}
        record_path = os.path.join(face_dir, FACE_MODELS_FILE)
        record = self.check_face_plan(record_path, planned)
        if scheme == "in_sample":
            print("[face] face.training_outputs=in_sample: the temporal model trains on the "
                  "face model's outputs for its own training frames (leaky; out_of_fold "
                  "or pretrained avoid it).")

        fingerprints, names = {}, {}
        for name, entry in plan.items():
            model = self.face_model(name, entry["trained_on"], indexes)
            fingerprints[name], names[name] = weights_fingerprint(model), model.name
            del model
        description = {"name": names[next(iter(plan))], "recipe": self.name,
                       "weights_sha1": fingerprints[next(iter(plan))]}
        if scheme != "in_sample":  # in_sample: the description caches had before the key
            description.update(training_outputs=scheme)
            if scheme == "out_of_fold":
                description["weights_sha1"] = fingerprints
        view = self.model_config.get("view", "aligned")
        for name, entry in plan.items():
            face = self.load_face_model(name)
            for split, index in indexes.items():
                videos = sorted(set(entry["outputs_for"]) & set(index.videos))
                if videos:
                    extract_features(face, index.subset(videos), cache_dir, view=view,
                                     normalization="unit",
                                     batch_size=self.config["face"]["extract_batch_size"],
                                     description=description)
            del face
        cache = FeatureCache(cache_dir)
        if record.get("weights_sha1") != fingerprints or "train_frames_expr" not in record:
            record = dict(record, weights_sha1=fingerprints,
                          train_frames_expr=self.training_frame_scores(indexes["train"], cache,
                                                                       plan))
            run_directory.write_json(record_path, record)
        self.face_record = record
        return cache

    @staticmethod
    def check_face_plan(path, planned):
        """The face directory's record of its plan (`face_models.json`): written now when
        there is none; one of another plan raises. Returns the record."""
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            run_directory.write_json(path, planned)
            return dict(planned)
        with open(path) as f:
            record = json.load(f)
        differs = sorted(key for key, value in planned.items() if record.get(key) != value)
        if differs:
            raise ValueError(
                f"{path}: this face directory's face models were planned with other "
                f"{', '.join(differs)} than this run's (e.g. other fold videos); its fold "
                "models could make the outputs of videos they trained on. Expected another "
                "face.dir, or this one deleted to start over.")
        return record

    def build_face_model(self):
        """The untrained face feature model of the config: `{"feature", "probabilities"}`."""
        face = self.config["face"]
        if face.get("trainable_from") and not face.get("weights"):
            raise ValueError(
                f"face.trainable_from={face['trainable_from']!r} freezes every layer before "
                "it, but face.weights is null: those layers would stay randomly initialised. "
                "Expected face.weights (a local keras-vggface resnet50 .h5, or converted "
                "VGGFace2 ResNet-50 weights), or --set face.trainable_from=null to train "
                "every layer from scratch.")
        size = int(face["image_size"])
        model = do2020_face_model(input_shape=(size, size, 3),
                                  num_classes=self.schema.num_expressions,
                                  weights=resolve_weights(face.get("weights"),
                                                          "face.weights"),
                                  trainable_from=face["trainable_from"],
                                  **(face.get("backbone") or {}))
        return self.check_face_model(model, "face.backbone")

    def check_face_model(self, model, where):
        """Raises unless `model` gives `feature` of the preset's width and `probabilities`
        of the schema's classes."""
        outputs = model.output if isinstance(model.output, dict) else {}
        expected = {"feature": int(self.model_config["feature_inputs"]["feature"][-1]),
                    "probabilities": self.schema.num_expressions}
        got = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
        if set(got) != set(FACE_OUTPUTS) or any(got[k][-1] != v for k, v in expected.items()):
            raise ValueError(
                f"{where}: expected a face feature model with outputs `feature` (B, "
                f"{expected['feature']}) (the preset's model.feature_inputs.feature) and "
                f"`probabilities` (B, {expected['probabilities']}) ({self.schema.edition}); got "
                f"{got or model.output}. Set model.feature_inputs.feature to the face model's "
                "feature width (the last of face.backbone.widths).")
        return model

    def face_model(self, name, trained_on, indexes):
        """A trained face model of the plan: its file when it exists, else trained on the
        training videos `trained_on` into its run directory (phase (a)) and saved there;
        `pretrained` is loaded or built, never trained."""
        if name == PRETRAINED_MODEL:
            return self.load_face_model(name)
        run_dir, path = self.face_model_paths(name)
        if os.path.exists(path):
            print(f"[face] using the face model of {path}")
            return self.load_face_model(name)
        if name == ALL_VIDEOS_MODEL and self.config["face"].get("model_file"):
            raise FileNotFoundError(f"face.model_file {path}: no such file; expected a trained "
                                    f"face feature model (a {FACE_MODEL_FILE} of a face dir).")
        train_index = indexes["train"]
        if set(trained_on) != set(train_index.videos):
            train_index = train_index.subset(trained_on)
        print(f"[face] training face model {name!r} on {len(trained_on)} training videos "
              f"({run_dir})")
        return self.train_face_model(run_dir, path, train_index, indexes["val"])

    def load_face_model(self, name):
        """The face model `name` of the plan, from its file (`pretrained`: `face.model_file`,
        or built with `face.weights`, which must fill every layer, its softmax included)."""
        _, path = self.face_model_paths(name)
        if path is not None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"face.model_file {path}: no such file; expected a "
                                        "trained face feature model (.keras).")
            return self.check_face_model(keras.saving.load_model(path), path)
        if not self.config["face"].get("weights"):
            raise ValueError(
                "face.training_outputs 'pretrained' uses a face model trained on other data "
                "as it is, but face.model_file and face.weights are null. Expected "
                "face.model_file (a face feature model .keras) or face.weights (the weights "
                "of a do2020_face_model fine-tuned for expressions, its softmax included).")
        # A layer the file leaves out keeps its initial weights: the same as those of a
        # model built from the same seed without the file.
        face = self.config["face"]
        size = int(face["image_size"])
        keras.utils.set_random_seed(self.config["seed"])
        initial = do2020_face_model(input_shape=(size, size, 3),
                                    num_classes=self.schema.num_expressions, weights=None,
                                    trainable_from=None, **(face.get("backbone") or {}))
        keras.utils.set_random_seed(self.config["seed"])
        model = self.build_face_model()
        unloaded = [layer.name for layer in model.layers
                    if getattr(layer, "kernel", None) is not None
                    and all(np.array_equal(a, b) for a, b in zip(
                        layer.get_weights(), initial.get_layer(layer.name).get_weights()))]
        if unloaded:
            raise ValueError(
                f"face.weights {face['weights']}: no weights for the layer(s) {unloaded[:5]}, "
                "which keep their initial values. face.training_outputs 'pretrained' uses "
                "the face model untrained here, so every layer must come from the file; "
                "expected the weights of a whole do2020_face_model fine-tuned for "
                "expressions (not a backbone-only file).")
        return model

    def train_face_model(self, run_dir, path, train_index, val_index):
        """Phase (a): fine-tunes a face model for expressions on class-balanced frames of
        `train_index`, as a resumable `Trainer` stage in `run_dir` (its best epoch by the
        official validation set, for every model of the plan alike); saves it to `path`
        and returns it. Every face model starts from the run's seed: the same initial
        weights, so the fold models differ only by the videos they learnt from."""
        face = self.config["face"]
        keras.utils.set_random_seed(self.config["seed"])
        tasks = ("expr",)
        common = dict(tasks=tasks, batch_size=face["batch_size"], image_size=face["image_size"],
                      normalization="unit")
        augment = face.get("augment") or None  # True: `affectkit.data.augmentation`'s default
        train_ds = frame_dataset(balanced_expression_index(train_index, self.config["seed"]),
                                 training=True, shuffle_seed=self.config["seed"],
                                 augment=augment, **common)
        val_ds = frame_dataset(val_index, **common)
        val_labels = label_arrays(val_index, tasks)

        trainer = Trainer.from_config(run_dir, self.schema, tasks, self.config["run"])
        with trainer.strategy.scope():
            model = self.build_face_model()
            network = keras.Model(model.input, {"expr": model.get_layer("probabilities").output},
                                  name="do2020_face_training")
        trainer.run_stage("face", network, {"expr": losses.MaskedCategoricalCrossentropy()},
                          lambda: build_optimizer(face["optimizer"]), train_ds, val_ds,
                          val_labels, epochs=face["epochs"])
        baselines = {"expr": metrics.chance_baselines(
            "expr", self.schema, label_arrays(train_index, tasks)["expr"], val_labels["expr"])}
        trainer.finish(network, val_ds, val_labels, baselines=baselines,
                       extra={"recipe": self.name, "phase": "face", "face": face,
                              "trained_on": sorted(train_index.videos)})
        best = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
        model = keras.Model(best.input, {name: best.get_layer(name).output
                                         for name in FACE_OUTPUTS}, name="do2020_face_model")
        run_directory.write_atomic(path, model.save)
        return model

    def training_frame_scores(self, train_index, cache, plan):
        """Expression scores (`metrics.abaw_scores`) of face outputs on the training frames
        with a label and an image (a seeded sample of `LEAK_CHECK_FRAMES` at most):
        `training_inputs`, the cached outputs the temporal model trains on; `in_sample`,
        those of a face model that trained on the frame's video (out of fold: the next
        fold's model, run now; in sample: the cached ones). Their gap is the size of the
        stacking leak; validation (`face_model_softmax`) shows what unseen videos get."""
        frames = train_index.frames
        rows = np.flatnonzero((frames["expr"].to_numpy() >= 0)
                              & frames["has_image"].to_numpy(bool))
        if len(rows) > LEAK_CHECK_FRAMES:
            rows = np.sort(np.random.default_rng(self.config["seed"]).choice(
                rows, LEAK_CHECK_FRAMES, replace=False))
        sample = FrameIndex(frames.iloc[rows].reset_index(drop=True), self.schema,
                            train_index.root)
        labels = sample.frames["expr"].to_numpy()
        cached = cache.features_for(sample, ["probabilities"])["probabilities"]
        out = {"frames": int(len(rows)),
               "training_inputs": metrics.abaw_scores("expr", self.schema, labels, cached)}
        if ALL_VIDEOS_MODEL in plan:
            out["in_sample"] = out["training_inputs"]
        elif len(plan) > 1:  # out of fold
            face = self.config["face"]
            names = list(plan)
            made_by = {video: name for name, entry in plan.items()
                       for video in entry["outputs_for"]}
            in_fold = np.array([names[(names.index(made_by[v]) + 1) % len(names)]
                                for v in sample.frames["video"]])
            probabilities = np.zeros_like(cached)
            for name in names:
                chosen = np.flatnonzero(in_fold == name)
                if len(chosen):
                    part = FrameIndex(sample.frames.iloc[chosen].reset_index(drop=True),
                                      self.schema, train_index.root)
                    dataset = frame_dataset(part, tasks=("expr",),
                                            batch_size=face["extract_batch_size"],
                                            image_size=face["image_size"], normalization="unit")
                    model = self.load_face_model(name)
                    probabilities[chosen] = model.predict(dataset, verbose=0)["probabilities"]
            out["in_sample"] = metrics.abaw_scores("expr", self.schema, labels, probabilities)
        return out
