"""`affectkit predict` with models of cached features, streamed per face track: do2020's
windows of previous frames, liu2023's segments (the transformer's padding masked, the
LSTM's state carried from segment to segment).

Each run directory here is a recipe's, its caches built from the demo data and its temporal
model untrained (random weights: what is checked is the streaming, not the training). The
faces come from the demo writer's true landmarks, with a gap where the face is hidden, so
a track ends and a new one starts. Checked against independent references:
- the live features (the face model, the rebuilt visual extractor, the video's log-mel)
  equal the caches the runs trained on, frame for frame;
- the streamed predictions equal the model on the runs of each track cut offline as in
  training and evaluation (`window_indices`; `segment_indices` with `valid`; the LSTM over
  the whole run from a zero state, as the recipe's evaluation reads it).
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

from affectkit import presets
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.sequences import segment_indices, video_runs, window_indices
from affectkit.data.synthetic import LANDMARK_NAMES, demo_landmarks, write_demo_dataset
from affectkit.features.cache import FeatureCache
from affectkit.features.live import AudioFeatures, live_source
from affectkit.inference.detection import Face
from affectkit.inference.predictor import FacePredictor
from affectkit.recipes import get_recipe
from affectkit.training.run_directory import write_run_config

DEMO = dict(edition="abaw3", videos=4, frames=24, seed=5, image_size=32)
HIDDEN = range(9, 12)  # 0-based frames where the detector finds no face
LIU = "liu2023_multimodal_ensemble"
DO = "do2020_stat_temporal"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data (4 face tracks of 24 frames, 32 px faces) and its true landmarks."""
    root = str(tmp_path_factory.mktemp("temporal") / "data")
    summary = write_demo_dataset(root, **DEMO)
    return root, summary, demo_landmarks(**DEMO)


class TruthDetector:
    """The demo writer's faces of one source video, frame after frame (none in `HIDDEN`)."""

    def __init__(self, marks):
        self.marks, self.calls = marks, 0

    def __call__(self, frame):
        index, self.calls = self.calls, self.calls + 1
        if index in HIDDEN or index >= len(self.marks):
            return []
        faces = []
        for points in self.marks[index]:
            low, high = points.min(0), points.max(0)
            side = float((high - low).max()) * 1.6
            centre = (low + high) / 2
            box = np.r_[centre - side / 2, side, side].astype(np.float32)
            faces.append(Face(box, 0.99, points.astype(np.float32), LANDMARK_NAMES))
        return faces


class Recorder:
    """Wraps a predictor's live features, keeping what every call gave."""

    def __init__(self, live):
        self.live, self.crops, self.calls = live, live.crops, []

    def start(self, path=None):
        self.live.start(path)

    def __call__(self, crops, frames):
        out = self.live(crops, frames)
        self.calls.append((list(frames), out))
        return out

    def per_frame(self):
        """dict input -> (frames, dim) in frame order (one face per frame here)."""
        frames = np.concatenate([np.asarray(f) for f, _ in self.calls])
        order = np.argsort(frames, kind="stable")
        return frames[order], {name: np.concatenate([out[name] for _, out in self.calls])[order]
                               for name in self.calls[0][1]}


def make_run(recipe_name, config, data, out, adapt=None):
    """A run directory of `recipe_name`: its caches prepared, its model untrained."""
    recipe = get_recipe(recipe_name)(config, data, out, preset="cpu_demo")
    recipe.prepare()
    write_run_config(out, recipe_name, "cpu_demo", recipe.config, data, recipe.schema)
    network = recipe.build_model()
    if adapt is not None:
        adapt(recipe, network)
    network.save(os.path.join(out, "model.keras"))
    return recipe, network


def source_video(summary):
    """The single-face source video of the demo's validation split (and its name)."""
    for source, tracks in summary["sources"].items():
        if len(tracks) == 1 and "val" in source:
            return source, tracks[0]
    raise AssertionError(f"no single-face validation video in {summary['sources']}")


def predict(run, demo, batch_size=5):
    root, summary, marks = demo
    source, track = source_video(summary)
    predictor = FacePredictor(run, detector=TruthDetector(marks[source][:, :1]),
                              batch_size=batch_size)
    predictor.features = Recorder(predictor.features)
    table = predictor.predict_video(os.path.join(root, "videos", source + ".mp4"))
    return predictor, table, track


def check_rows(table, frames):
    """One row per frame, none with a face in `HIDDEN` (the track's gap: the tracker keeps
    its id, the model reads the frames after it as a new run)."""
    assert list(table["frame"]) == list(range(1, frames + 1))
    hidden = table["frame"].isin([i + 1 for i in HIDDEN])
    assert (table["success"] == np.where(hidden, 0, 1)).all()
    assert table.loc[hidden, "expression"].isna().all()
    assert table.loc[~hidden, "face_id"].nunique() == 1


def runs_of(table):
    """`(videos, frames)` of the rows with a face: a track id per row, its frame number."""
    faces = table[table["success"] == 1]
    return faces["face_id"].to_numpy().astype(str), faces["frame"].to_numpy(np.int64)


# ------------------------------------------------------------------------- liu2023

LIU_TINY = ["features.visual.image_size=32",
            "features.visual.hyperparameters=" + json.dumps(
                {"depths": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "group_width": 8,
                 "stem_width": 8}),
            'model.feature_inputs={"features": [null, 112]}', "model.neck.units=16",
            'model.temporal={"num_layers": 1, "num_heads": 2, "head_dim": 8, "mlp_dim": 16}',
            'model.heads={"expr": {"hidden_units": [8]}}', "lstm.units=8",
            "data.segment_length=4", "data.batch_size=3", "fold=5"]


def adapt_standardisation(recipe, network):
    index = FrameIndex.from_affwild2(recipe.data, recipe.schema, "train", tasks=("expr",))
    recipe.train_features = np.concatenate(
        [FeatureCache(c.path).matrix(index) for c in recipe.feature_caches], axis=1)
    recipe.adapt_model(network)


@pytest.fixture(scope="module")
def liu_runs(demo, tmp_path_factory):
    """A transformer run and an LSTM run sharing one set of caches (visual, log-mel)."""
    root = demo[0]
    folder = tmp_path_factory.mktemp("liu_runs")
    runs = {}
    for encoder in ("transformer", "lstm"):
        config = presets.resolve(LIU, "cpu_demo", epochs=1,
                                 sets=LIU_TINY + [f"encoder={encoder}",
                                                  f"features.cache_dir={folder / 'features'}"])
        out = str(folder / encoder)
        runs[encoder] = (out, *make_run(LIU, config, root, out, adapt_standardisation))
    return runs


def test_live_features_equal_the_caches_the_run_trained_on(demo, liu_runs):
    root, summary, _ = demo
    recipe = liu_runs["transformer"][1]
    visual, audio = (FeatureCache(c.path) for c in recipe.feature_caches)
    source, track = source_video(summary)
    # The visual extractor rebuilt from its manifest, on the cached frames' own JPEGs.
    live = live_source(visual)
    stored = visual.load(track)
    frames = stored["frames"][:6]
    import cv2

    crops = np.stack([cv2.imread(os.path.join(root, "cropped_aligned", track,
                                              f"{k:05d}.jpg"))[..., ::-1] for k in frames])
    np.testing.assert_allclose(live(crops)["features"], stored["features"][:6], atol=1e-5)
    # The log-mel of the video's sound track, frame for frame.
    sound = live_source(audio)
    assert isinstance(sound, AudioFeatures)
    sound.start(os.path.join(root, "videos", source + ".mp4"))
    np.testing.assert_array_equal(sound(np.arange(len(sound.values)))["logmel"],
                                  audio.load(track)["logmel"])


def test_transformer_segments_per_track_with_the_padding_masked(demo, liu_runs):
    run, recipe, network = liu_runs["transformer"]
    predictor, table, _ = predict(run, demo)
    check_rows(table, DEMO["frames"])
    _, features = predictor.features.per_frame()
    videos, frames = runs_of(table)
    segments = segment_indices(videos, frames, 4)
    assert (~segments.valid).any(), "a track ends inside a segment (padding masked)"
    outputs = network.predict({"features": features["features"][segments.rows],
                               "valid": segments.valid}, verbose=0)
    expected = segments.to_rows({"expr": outputs["expr"]}, len(frames))["expr"]
    got = table.loc[table["success"] == 1, list(recipe.schema.expressions)].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_lstm_state_carried_from_segment_to_segment_of_a_track(demo, liu_runs):
    run, recipe, network = liu_runs["lstm"]
    predictor, table, _ = predict(run, demo)
    check_rows(table, DEMO["frames"])
    _, features = predictor.features.per_frame()
    videos, frames = runs_of(table)
    expected = []
    for start, stop in zip(*video_runs(videos, frames)):  # each run whole, from zero
        x = features["features"][start:stop][None]
        zeros = np.zeros((1, 8), np.float32)
        expected.append(network.predict({"features": x, "state_h": zeros, "state_c": zeros},
                                        verbose=0)["expr"][0])
    got = table.loc[table["success"] == 1, list(recipe.schema.expressions)].to_numpy()
    np.testing.assert_allclose(got, np.concatenate(expected), atol=1e-5)


def test_a_model_of_cached_features_needs_its_run_directory(liu_runs, tmp_path):
    run = liu_runs["transformer"][0]
    alone = tmp_path / "model.keras"
    alone.write_bytes(open(os.path.join(run, "model.keras"), "rb").read())
    with pytest.raises(ValueError, match="expected its run directory"):
        FacePredictor(str(alone), detector=lambda frame: [])


def test_images_have_no_sound_for_an_audio_model(demo, liu_runs):
    root, summary, _ = demo
    _, track = source_video(summary)
    predictor = FacePredictor(liu_runs["transformer"][0], detector=lambda frame: [])
    image = os.path.join(root, "cropped_aligned", track, "00001.jpg")
    with pytest.raises(ValueError, match="only a video file has"):
        predictor.predict_images([image])


# ------------------------------------------------------------------------- do2020

DO_TINY = {
    "face.image_size": 32,
    "face.backbone": {"depths": [1, 1, 1, 1], "stem_width": 8, "widths": [16, 32, 64, 128]},
    "model.feature_inputs": {"feature": [128], "probabilities": [4, 7]},
    "model.temporal.lstm_units": 4,
    "model.heads": {task: {"hidden_units": [8, 8]} for task in ("expr", "va", "va_vector")},
    "data.batch_size": 16,
    "variant": "emotion_va_frame_lstm",
    "edition": "abaw3",
}


@pytest.fixture(scope="module")
def do_run(demo, tmp_path_factory):
    """Model 6 of Table I over the cache of a face model trained on other data (an
    untrained one, saved: `face.training_outputs=pretrained`)."""
    import keras

    folder = tmp_path_factory.mktemp("do_run")
    config = presets.resolve(DO, "cpu_demo", epochs=1)
    for key, value in DO_TINY.items():
        presets.set_key(config, key, value)
    keras.utils.set_random_seed(1)
    face_file = str(folder / "face.keras")
    get_recipe(DO)(config, None, "unused").build_face_model().save(face_file)
    presets.set_key(config, "face.training_outputs", "pretrained")
    presets.set_key(config, "face.model_file", face_file)
    out = str(folder / "run")
    return (out, *make_run(DO, config, demo[0], out))


def test_windows_of_previous_frames_per_track(demo, do_run):
    run, recipe, network = do_run
    predictor, table, track = predict(run, demo)
    check_rows(table, DEMO["frames"])
    _, features = predictor.features.per_frame()
    videos, frames = runs_of(table)
    rows = window_indices(videos, frames, 4)
    outputs = network.predict({"feature": features["feature"],
                               "probabilities": features["probabilities"][rows]}, verbose=0)
    faces = table[table["success"] == 1]
    np.testing.assert_allclose(faces[["valence", "arousal"]], np.clip(outputs["va"], -1, 1),
                               atol=1e-5)
    np.testing.assert_allclose(faces[list(recipe.schema.expressions)], outputs["expr"],
                               atol=1e-5)
    # The face model's live outputs are those the cache holds for the same JPEGs.
    import cv2

    root = demo[0]
    cache = FeatureCache(recipe.face_paths()[2])
    stored = cache.load(track)
    crops = np.stack([cv2.imread(os.path.join(root, "cropped_aligned", track,
                                              f"{k:05d}.jpg"))[..., ::-1]
                      for k in stored["frames"][:5]])
    live = predictor.features.live.sources[0](crops)
    for name in ("feature", "probabilities"):
        np.testing.assert_allclose(live[name], stored[name][:5], atol=1e-5)
    # The CSV of the command has the same rows.
    assert isinstance(table, pd.DataFrame) and len(table) == DEMO["frames"]
