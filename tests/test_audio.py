"""Audio features: frame alignment, loudness against the synthetic arousal, shared audio of
`_left` / `_right`, the log-mel computation against NumPy, and the command line.

The NumPy reference builds the periodic Hann window, the zero-padded real FFT and the HTK
mel triangles from their formulas.
"""

import os

import cv2
import numpy as np
import pytest

from affectkit import cli
from affectkit.data.affwild2 import FrameIndex
from affectkit.features import audio
from affectkit.features.cache import CacheWriter, FeatureCache, feature_matrix

FRAMES = 150
FPS = 30
RATE = 16000


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """4 videos of 5 s: train `demo_train_000`, the pair `demo_train_001_left/_right`; val 1."""
    from affectkit.data.synthetic import write_demo_dataset

    out = str(tmp_path_factory.mktemp("audio") / "data")
    write_demo_dataset(out, edition="abaw3", videos=4, frames=FRAMES, seed=5, image_size=16,
                       fps=FPS)
    return out


@pytest.fixture(scope="module")
def logmel(root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("logmel") / "cache")
    summary = audio.extract_audio_features(root, out, "logmel", verbose=0)
    assert summary["videos_done"] == 4
    return FeatureCache(out)


def test_one_log_mel_vector_per_video_frame(logmel, root):
    assert logmel.dims == {"logmel": 80}
    assert logmel.manifest["modality"] == "audio"
    for video in logmel.videos:
        path = audio.find_video_file(os.path.join(root, "videos"), video)
        num_frames, fps = audio.video_timing(path)
        assert (num_frames, fps) == (FRAMES, FPS)
        stored = logmel.load(video)
        assert stored["logmel"].shape == (FRAMES, 80)
        np.testing.assert_array_equal(stored["frames"], np.arange(1, FRAMES + 1))
        assert np.isfinite(stored["logmel"]).all()


def test_loudness_follows_arousal(logmel, root):
    for split, video in (("train", "demo_train_000"), ("val", "demo_val_000")):
        index = FrameIndex.from_affwild2(root, "abaw3", split).subset([video])
        arousal = index.frames["arousal"].to_numpy()
        labelled = arousal != -5
        loudness = logmel.features_for(index)["logmel"].mean(axis=1)
        r = np.corrcoef(loudness[labelled], arousal[labelled])[0, 1]
        assert r > 0.7, (video, r)


def test_left_and_right_share_the_source_audio(logmel, root):
    left = logmel.load("demo_train_001_left")["logmel"]
    right = logmel.load("demo_train_001_right")["logmel"]
    np.testing.assert_array_equal(left, right)
    assert not np.array_equal(left, logmel.load("demo_train_000")["logmel"])
    videos = os.path.join(root, "videos")
    assert audio.find_video_file(videos, "demo_train_001_right") == os.path.join(
        videos, "demo_train_001.mp4")
    assert audio.source_video_name("x_left") == "x" and audio.source_video_name("x") == "x"
    with pytest.raises(FileNotFoundError, match="nope_left, nope"):
        audio.find_video_file(videos, "nope_left")


def numpy_log_mel(signal, num_frames, fps, rate=RATE, bands=80, length=1024, lower=20.0):
    """Log-mel per frame from the formulas: periodic Hann, rfft, HTK mel triangles."""
    upper = rate / 2
    fft_length = 1024
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
    padded = np.concatenate([np.zeros(length), signal, np.zeros(2 * length)])
    spectra = []
    for k in range(num_frames):
        centre = int(round((k + 0.5) / fps * rate))
        window = padded[centre - length // 2 + length: centre - length // 2 + 2 * length]
        spectra.append(np.abs(np.fft.rfft(window * hann, fft_length)) ** 2)
    power = np.array(spectra)

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    edges = np.linspace(mel(lower), mel(upper), bands + 2)
    bin_mel = mel(np.linspace(0, upper, fft_length // 2 + 1))
    filters = np.zeros((fft_length // 2 + 1, bands))
    for b in range(bands):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        rising = (bin_mel - lo) / (mid - lo)
        falling = (hi - bin_mel) / (hi - mid)
        filters[:, b] = np.maximum(0, np.minimum(rising, falling))
    filters[0] = 0  # the DC bin carries no band
    return np.log(power @ filters + 1e-6), 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)


def test_log_mel_matches_numpy_and_a_pure_tone_peaks_in_its_band():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.0 * RATE)) / RATE
    noise = 0.05 * rng.standard_normal(len(t))
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) + noise
    got = audio.log_mel_frames(signal.astype(np.float32), 50, 25, RATE)
    expected, centres = numpy_log_mel(signal, 50, 25)
    assert got.shape == (50, 80)
    np.testing.assert_allclose(got, expected, atol=5e-4, rtol=1e-4)
    for band in (8, 30, 55, 75):
        tone = 0.5 * np.sin(2 * np.pi * centres[band] * t)
        values = audio.log_mel_frames(tone.astype(np.float32), 40, 25, RATE)
        peaks = values[2:-2].argmax(axis=1)  # frames whose window lies inside the tone
        nearest = int(np.argmin(np.abs(centres - centres[band])))
        assert (peaks == nearest).all(), (band, np.unique(peaks))


def test_frame_means_by_hand():
    times = np.array([0.005, 0.015, 0.025, 0.035, 0.105])
    values = np.arange(10, dtype=np.float64).reshape(5, 2)
    got = audio.frame_means(values, times, num_frames=4, fps=25)  # spans of 40 ms
    np.testing.assert_allclose(got[0], values[:4].mean(axis=0))  # 0..40 ms: rows 0-3
    np.testing.assert_allclose(got[1], values[3])  # 40..80 ms: none, centre 60 ms -> 35 ms
    np.testing.assert_allclose(got[2], values[4])  # 80..120 ms: row 4
    np.testing.assert_allclose(got[3], values[4])  # 120..160 ms: none, nearest row 4


def test_a_video_without_audio_is_reported(tmp_path):
    path = str(tmp_path / "silent.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (32, 32))
    for _ in range(5):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    with pytest.raises(ValueError, match="silent.mp4: has no audio track"):
        audio.read_audio(path)


def test_cli_logmel_round_trip(root, tmp_path, capsys):
    out = str(tmp_path / "cli_logmel")
    args = ["extract-features", "--model", "logmel", "--data", root, "--out", out,
            "--split", "val", "--edition", "abaw3"]
    assert cli.main(args) == 0
    assert "videos_done: 1" in capsys.readouterr().out
    cache = FeatureCache(out)
    assert cache.videos == ["demo_val_000"] and cache.dims == {"logmel": 80}
    assert cli.main(args) == 0
    assert "videos_skipped: 1" in capsys.readouterr().out


def test_audio_cache_combines_with_a_visual_one(logmel, root, tmp_path):
    index = FrameIndex.from_affwild2(root, "abaw3", "train")
    writer = CacheWriter(tmp_path / "visual", {"modality": "visual",
                                                        "model": {"name": "ones"}})
    for video in index.videos:
        frames = np.arange(1, FRAMES + 1)
        writer.write(video, frames, {"v": np.ones((FRAMES, 2), np.float32)})
    matrix = feature_matrix(index, [FeatureCache(tmp_path / "visual"),
                                             logmel])
    assert matrix.shape == (len(index), 82)
    np.testing.assert_array_equal(matrix[:, 2:], logmel.matrix(index))


def test_egemaps_with_opensmile(root, tmp_path):
    pytest.importorskip("opensmile")
    out = str(tmp_path / "egemaps")
    audio.extract_audio_features(root, out, "egemaps", videos=["demo_val_000"], verbose=0)
    cache = FeatureCache(out)
    values = cache.load("demo_val_000")["egemaps"]
    assert values.shape[0] == FRAMES and values.shape[1] == cache.dims["egemaps"] >= 20
    assert np.isfinite(values).all()
    # openSMILE's loudness descriptor follows the synthetic arousal too.
    path = audio.find_video_file(os.path.join(root, "videos"), "demo_val_000")
    direct, names = audio.egemaps_frames(audio.read_audio(path), FRAMES, FPS)
    np.testing.assert_allclose(direct, values, rtol=1e-6)
    arousal = FrameIndex.from_affwild2(root, "abaw3", "val").frames["arousal"].to_numpy()
    labelled = arousal != -5
    loudness = direct[:, names.index("Loudness_sma3")]
    assert np.corrcoef(loudness[labelled], arousal[labelled])[0, 1] > 0.7


def test_egemaps_without_opensmile_is_a_clear_error(root, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def no_opensmile(name, *args, **kwargs):
        return None if name == "opensmile" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_opensmile)
    with pytest.raises(ImportError, match="pip install opensmile"):
        audio.extract_audio_features(root, str(tmp_path / "e"), "egemaps", verbose=0)
    code = cli.main(["extract-features", "--model", "egemaps", "--data", root, "--out",
                     str(tmp_path / "e")])
    assert code == 2 and "pip install opensmile" in capsys.readouterr().err
