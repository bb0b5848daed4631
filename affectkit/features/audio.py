"""Audio features aligned to video frames, stored as a feature cache (a modality).

- The audio track is read with the ffmpeg binary of `imageio-ffmpeg`, as mono 16-bit PCM
  at 16 kHz.
- `log_mel_frames`: one 80-band log-mel vector per video frame, from a Hann window centred on
  the frame's time, with `tf.signal.stft` and `tf.signal.linear_to_mel_weight_matrix`.
- `egemaps_frames`: the eGeMAPS v02 low-level descriptors of openSMILE (`opensmile` package,
  optional; run in a child process, see `OpenSmileProcess`), averaged over each frame's
  time span.

Frame k (1-based, as in `<video>/<k:05d>.jpg` and line k of an annotation file) spans
`[(k - 1) / fps, k / fps)` seconds; its time is the centre, `(k - 0.5) / fps`. Every frame of
the video file gets a vector, so nothing needs filling; a frame number past the video's
last frame takes the last frame's features when read (`FeatureCache.features_for`).

Videos `<name>_left` and `<name>_right` (two faces of one source video, REFERENCE section 2)
share the audio of `<name>`: the file `<videos>/<name>.<ext>` serves both and its features
are computed once.

Liu et al. (ABAW5 2023) combine audio features with visual ones per frame; pass the audio
cache with the visual ones to `affectkit.data.sequences` (a list of sources concatenates).

Example:
>>> extract_audio_features("affwild2", "cache/logmel", features="logmel")
>>> FeatureCache("cache/logmel").features_for(index)["logmel"].shape   # (len(index), 80)
"""

import os
import subprocess

import numpy as np

from affectkit.data.affwild2 import video_names
from affectkit.features.cache import CacheWriter

AUDIO_SAMPLE_RATE = 16000
NUM_MEL_BANDS = 80
AUDIO_FEATURES = ("logmel", "egemaps")
PAIR_SUFFIXES = ("_left", "_right")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
LOG_OFFSET = 1e-6


# ------------------------------------------------------------------------- files


def source_video_name(video):
    """The source video of a face track: `"x_left"` and `"x_right"` -> `"x"`, others unchanged."""
    for suffix in PAIR_SUFFIXES:
        if video.endswith(suffix) and len(video) > len(suffix):
            return video[: -len(suffix)]
    return video


def find_video_file(videos_dir, video):
    """The video file of a face track: `<videos_dir>/<video>.<ext>`, else its source's.

    Raises:
        FileNotFoundError: naming the folder and every name tried.
    """
    names = [video]
    if source_video_name(video) != video:
        names.append(source_video_name(video))
    for name in names:
        for ext in VIDEO_EXTENSIONS:
            path = os.path.join(videos_dir, name + ext)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"{videos_dir}: no video file for {video!r}; tried {', '.join(names)} with "
        f"extensions {', '.join(VIDEO_EXTENSIONS)}."
    )


def _ffmpeg():
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:  # noqa: BLE001 - report any way the binary is missing
        raise RuntimeError(
            f"Reading audio needs the ffmpeg binary of the imageio-ffmpeg package ({error})."
        ) from error


def read_audio(path, sample_rate=AUDIO_SAMPLE_RATE):
    """The first audio track of a media file as mono float32 samples in [-1, 1).

    Decoded by ffmpeg to 16-bit PCM at `sample_rate` Hz (channels averaged).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file has no audio track or ffmpeg cannot decode it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected a video file with an audio track.")
    command = [
        _ffmpeg(), "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-vn",
        "-ac", "1", "-ar", str(int(sample_rate)), "-f", "s16le", "-acodec", "pcm_s16le", "-",
    ]
    result = subprocess.run(command, capture_output=True)
    message = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        if "matches no streams" in message or "does not contain any stream" in message:
            raise ValueError(f"{path}: has no audio track; expected a video with sound.")
        raise ValueError(f"{path}: ffmpeg could not decode the audio (exit "
                         f"{result.returncode}): {message[-500:]}")
    pcm = np.frombuffer(result.stdout, dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def video_timing(path):
    """`(num_frames, fps)` of a video file (frames counted by ffmpeg without decoding)."""
    import imageio_ffmpeg

    path = os.fspath(path)
    try:
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        reader.close()
        num_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except Exception as error:  # noqa: BLE001 - name the file in whatever went wrong
        raise ValueError(f"{path}: cannot read the video's frame rate and frame count "
                         f"({type(error).__name__}: {error}).") from error
    fps = float(meta.get("fps") or 0)
    if fps <= 0 or num_frames <= 0:
        raise ValueError(f"{path}: fps {fps}, {num_frames} frames; expected a video with frames.")
    return int(num_frames), fps


def frame_times(num_frames, fps):
    """Centre times in seconds of frames 1..num_frames: `(k - 0.5) / fps`."""
    return (np.arange(int(num_frames), dtype=np.float64) + 0.5) / float(fps)


# ------------------------------------------------------------------------- log-mel


def mel_weight_matrix(num_spectrogram_bins, sample_rate=AUDIO_SAMPLE_RATE,
                      num_mel_bands=NUM_MEL_BANDS, lower_hz=20.0, upper_hz=None):
    """Triangular mel filters (HTK mel scale), `(num_spectrogram_bins, num_mel_bands)` float32.

    `tf.signal.linear_to_mel_weight_matrix` with `upper_hz` defaulting to the Nyquist frequency.
    """
    import tensorflow as tf

    upper_hz = sample_rate / 2.0 if upper_hz is None else float(upper_hz)
    if not 0 <= lower_hz < upper_hz <= sample_rate / 2.0:
        raise ValueError(
            f"Mel band edges {lower_hz} Hz .. {upper_hz} Hz; expected 0 <= lower < upper <= "
            f"{sample_rate / 2.0} Hz (half the sample rate)."
        )
    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=int(num_mel_bands), num_spectrogram_bins=int(num_spectrogram_bins),
        sample_rate=float(sample_rate), lower_edge_hertz=float(lower_hz),
        upper_edge_hertz=float(upper_hz), dtype=tf.float32,
    )


def log_mel_frames(audio, num_frames, fps, sample_rate=AUDIO_SAMPLE_RATE,
                   num_mel_bands=NUM_MEL_BANDS, window_seconds=0.064, lower_hz=20.0,
                   upper_hz=None, chunk_frames=4096):
    """One log-mel vector per video frame, from a Hann window centred on the frame's time.

    `log(mel power + 1e-6)`: the power spectrum of the windowed samples (`tf.signal.stft`,
    FFT length the next power of two) through `mel_weight_matrix`. Samples before the start
    or after the end of the audio count as silence.

    Args:
        audio: mono samples `(n,)` in [-1, 1].
        num_frames: video frames to describe (frames 1..num_frames).
        fps: video frame rate.
        sample_rate: sample rate of `audio`.
        num_mel_bands: mel bands (80).
        window_seconds: window length (0.064 s = 1024 samples at 16 kHz).
        lower_hz, upper_hz: band edges of the filterbank (upper default: Nyquist).
        chunk_frames: frames computed at a time (bounds memory).
    Returns:
        float32 `(num_frames, num_mel_bands)`.
    """
    import tensorflow as tf

    audio = np.asarray(audio, np.float32).reshape(-1)
    length = int(round(window_seconds * sample_rate))
    if length < 2:
        raise ValueError(f"window_seconds={window_seconds} gives {length} samples; expected >= 2.")
    fft_length = 1 << (length - 1).bit_length()
    weights = mel_weight_matrix(fft_length // 2 + 1, sample_rate, num_mel_bands, lower_hz,
                                upper_hz)
    starts = np.round(frame_times(num_frames, fps) * sample_rate).astype(np.int64) - length // 2
    if len(starts) == 0:
        return np.zeros((0, int(num_mel_bands)), np.float32)
    right = max(0, int(starts.max()) + length - len(audio))
    padded = tf.constant(np.concatenate([np.zeros(length, np.float32), audio,
                                         np.zeros(right, np.float32)]))
    offsets = np.arange(length, dtype=np.int64)
    parts = []
    for i in range(0, len(starts), int(chunk_frames)):
        windows = tf.gather(padded, (starts[i:i + chunk_frames] + length)[:, None] + offsets)
        spectrum = tf.signal.stft(windows, frame_length=length, frame_step=length,
                                  fft_length=fft_length, window_fn=tf.signal.hann_window)
        power = tf.square(tf.abs(spectrum[:, 0, :]))
        parts.append(tf.math.log(tf.matmul(power, weights) + LOG_OFFSET).numpy())
    return np.concatenate(parts).astype(np.float32)


# ------------------------------------------------------------------------- eGeMAPS

# openSMILE's native library crashes (segmentation fault) when it runs in a process that
# loaded TensorFlow first, which `import affectkit` does. It therefore runs in a child Python
# process that imports only NumPy and opensmile, fed one audio file at a time.
_OPENSMILE_WORKER = r"""
import json, sys
sys.path[:] = json.loads(sys.argv[1])
import numpy as np, opensmile
smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                        feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
print("ready", flush=True)
for line in sys.stdin:
    source, target, rate = line.rstrip("\n").split("\t")
    try:
        table = smile.process_signal(np.load(source), int(rate))
        index = table.index
        np.savez(target, values=table.to_numpy(np.float64),
                 start=index.get_level_values("start").total_seconds().to_numpy(),
                 end=index.get_level_values("end").total_seconds().to_numpy(),
                 names=np.array([str(c) for c in table.columns]))
        print("ok", flush=True)
    except Exception as error:
        print("error " + repr(error).replace("\n", " "), flush=True)
"""


def _check_opensmile():
    import importlib.util

    if importlib.util.find_spec("opensmile") is None:
        raise ImportError(
            "eGeMAPS features need the optional `opensmile` package (pip install opensmile), "
            "which is not installed. Log-mel features ('logmel') need nothing more."
        )


class OpenSmileProcess:
    """openSMILE's eGeMAPS v02 low-level descriptors, computed in a child Python process.

    openSMILE's native library crashes in a process that loaded TensorFlow first, so it runs
    in its own process (NumPy and opensmile only), started once and fed one signal at a time.
    Use as a context manager, or call `close()`.

    Example:
    >>> with OpenSmileProcess() as smile:
    ...     values, times, names = smile.descriptors(audio, 16000)
    """

    def __init__(self):
        import json
        import sys
        import tempfile

        _check_opensmile()
        self.folder = tempfile.mkdtemp(prefix="affectkit_opensmile_")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _OPENSMILE_WORKER, json.dumps(sys.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._expect("ready")

    def _expect(self, what):
        for line in self.process.stdout:  # lines other libraries print are passed over
            reply = line.strip()
            if reply == what:
                return
            if reply.startswith("error "):
                raise ValueError(f"openSMILE failed: {reply[len('error '):]}")
        self.process.kill()
        error = self.process.stderr.read().strip()
        raise RuntimeError(f"The openSMILE process stopped (exit {self.process.wait()}): "
                           f"{error[-800:]}")

    def descriptors(self, audio, sample_rate=AUDIO_SAMPLE_RATE):
        """`(values (m, 25), centre times (m,) in seconds, descriptor names)` of a signal."""
        import uuid

        name = uuid.uuid4().hex
        source = os.path.join(self.folder, name + ".npy")
        target = os.path.join(self.folder, name + ".npz")
        np.save(source, np.asarray(audio, np.float32).reshape(-1))
        try:
            self.process.stdin.write(f"{source}\t{target}\t{int(sample_rate)}\n")
            self.process.stdin.flush()
            self._expect("ok")
            with np.load(target) as data:
                times = (data["start"] + data["end"]) / 2.0
                return data["values"], times, data["names"].tolist()
        finally:
            for path in (source, target):
                if os.path.exists(path):
                    os.remove(path)

    def close(self):
        """Stops the child process and removes its temporary folder."""
        import shutil

        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def egemaps_frames(audio, num_frames, fps, sample_rate=AUDIO_SAMPLE_RATE, smile=None):
    """eGeMAPS v02 low-level descriptors per video frame (needs the `opensmile` package).

    openSMILE computes the descriptors every 10 ms; a frame gets the mean of those whose
    centre lies in its span `[(k - 1) / fps, k / fps)`, or the nearest one where none does.

    Args:
        audio, num_frames, fps, sample_rate: as in `log_mel_frames`.
        smile: an `OpenSmileProcess` to reuse; default a new one for this call.
    Returns:
        `(values float32 (num_frames, n_descriptors), descriptor names)`.
    """
    if smile is None:
        with OpenSmileProcess() as own:
            return egemaps_frames(audio, num_frames, fps, sample_rate, own)
    values, times, names = smile.descriptors(audio, sample_rate)
    return frame_means(values, times, num_frames, fps), names


def frame_means(values, times, num_frames, fps):
    """Means of time-stamped rows over each video frame's span, nearest row where none.

    Args:
        values: `(m, d)` rows at ascending `times` (seconds).
        num_frames: video frames; frame k spans `[(k - 1) / fps, k / fps)`.
        fps: video frame rate.
    Returns:
        float32 `(num_frames, d)`.
    """
    values = np.asarray(values, np.float64)
    times = np.asarray(times, np.float64)
    if len(times) == 0:
        raise ValueError("frame_means: no time-stamped rows to average.")
    edges = np.arange(int(num_frames) + 1, dtype=np.float64) / float(fps)
    first = np.searchsorted(times, edges[:-1], side="left")
    stop = np.searchsorted(times, edges[1:], side="left")
    sums = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    counts = stop - first
    out = (sums[stop] - sums[first]) / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        centres = frame_times(num_frames, fps)[empty]
        right = np.minimum(np.searchsorted(times, centres), len(times) - 1)
        left = np.maximum(right - 1, 0)
        nearest = np.where(centres - times[left] <= times[right] - centres, left, right)
        out[empty] = values[nearest]
    return out.astype(np.float32)


# ------------------------------------------------------------------------- cache


def video_audio_features(path, model, smile=None):
    """`(values float32 (num_frames, dim), fps)`: the audio features of every frame of a
    video file, as an audio cache's manifest `model` settings describe them (those
    `extract_audio_features` writes; `affectkit predict` computes a new video's alike).

    Raises:
        ValueError: naming the file, when it has no audio track or cannot be decoded.
    """
    num_frames, fps = video_timing(path)
    sample_rate = int(model["sample_rate"])
    audio = read_audio(path, sample_rate)
    if model["name"] == "logmel":
        values = log_mel_frames(audio, num_frames, fps, sample_rate, model["num_mel_bands"],
                                model["window_seconds"], model["lower_hz"], model["upper_hz"])
    elif model["name"] == "egemaps":
        values, _ = egemaps_frames(audio, num_frames, fps, sample_rate, smile)
    else:
        raise ValueError(f"audio features {model['name']!r}: expected one of {AUDIO_FEATURES}.")
    return values, fps



def _face_tracks(data, edition, split, videos_dir, videos):
    """`(face-track names, videos folder)` for an index or an Aff-Wild2 folder."""
    if hasattr(data, "frames") and hasattr(data, "schema"):
        names = data.videos
        root = data.root
    else:
        root = os.path.abspath(os.fspath(data))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such Aff-Wild2 folder.")
        names = video_names(root, edition, split)
    if videos_dir is None:
        if root is None:
            raise ValueError("The index has no root folder: pass videos_dir, the folder of "
                             "the video files.")
        videos_dir = os.path.join(root, "videos")
    videos_dir = os.path.abspath(os.fspath(videos_dir))
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"{videos_dir}: no such folder; expected the video files "
                                "(<video>.mp4 / .avi) to read the audio from.")
    if not names and split == "all":  # no frame folders: one track per video file
        names = sorted({os.path.splitext(n)[0] for n in os.listdir(videos_dir)
                        if n.lower().endswith(VIDEO_EXTENSIONS)})
    if videos is not None:
        videos = [videos] if isinstance(videos, str) else list(videos)
        unknown = sorted(set(videos) - set(names))
        if unknown:
            raise ValueError(f"Unknown video(s) {unknown[:5]}: expected names of the data.")
        names = [n for n in names if n in set(videos)]
    return names, videos_dir


def extract_audio_features(
    data,
    out,
    features="logmel",
    edition=None,
    split="all",
    videos_dir=None,
    videos=None,
    sample_rate=AUDIO_SAMPLE_RATE,
    num_mel_bands=NUM_MEL_BANDS,
    window_seconds=0.064,
    lower_hz=20.0,
    upper_hz=None,
    dtype="float32",
    verbose=1,
):
    """Computes audio features for every frame of every video and stores them as a cache.

    The cache has the layout of `affectkit.features.cache` (`<video>.npz` with `frames` 1..n
    of the video file, the features under the name `logmel` or `egemaps`, and the video's
    `fps`), so it combines with visual caches as a modality. Videos already in `out` are
    skipped.

    Args:
        data: a `FrameIndex` or an Aff-Wild2 folder (face tracks as in
            `affectkit.data.affwild2.video_names`).
        out: the cache folder.
        features: `"logmel"` (TensorFlow) or `"egemaps"` (needs `opensmile`).
        edition, split: as in `video_names` (folders only).
        videos_dir: folder of the video files; default `<root>/videos`.
        videos: only these face tracks (default: all).
        sample_rate: decoding sample rate (16 kHz).
        num_mel_bands, window_seconds, lower_hz, upper_hz: log-mel settings
            (`log_mel_frames`).
        dtype: storage dtype, `"float32"` or `"float16"`.
        verbose: 0 silent, 1 a progress bar over videos.

    Returns:
        dict: `path`, `videos_done`, `videos_skipped`, `frames` (stored now), `outputs`.
    """
    import keras

    if features not in AUDIO_FEATURES:
        raise ValueError(f"Unknown audio features {features!r}: expected one of {AUDIO_FEATURES}.")
    if features == "egemaps":
        _check_opensmile()  # fail before any work when the package is missing
    names, videos_dir = _face_tracks(data, edition, split, videos_dir, videos)
    model = {"name": features, "sample_rate": int(sample_rate)}
    if features == "logmel":
        model.update(num_mel_bands=int(num_mel_bands), window_seconds=float(window_seconds),
                     lower_hz=float(lower_hz),
                     upper_hz=float(sample_rate / 2.0 if upper_hz is None else upper_hz),
                     window="hann", log_offset=LOG_OFFSET)
    else:
        model.update(feature_set="eGeMAPSv02", feature_level="LowLevelDescriptors")
    writer = CacheWriter(out, {"modality": "audio", "model": model}, dtype)
    todo = [name for name in names if not writer.done(name)]
    if verbose:
        print(f"Extracting {features} features of {len(todo)} videos from {videos_dir} to "
              f"{writer.path}; {len(names) - len(todo)} already done.")
    progress = keras.utils.Progbar(len(todo), unit_name="video", verbose=1 if verbose else 0)
    last = (None, None)  # (video file, (frames, values, fps)): `_left` / `_right` share one
    frames_done = 0
    smile = OpenSmileProcess() if features == "egemaps" and todo else None
    try:
        for i, name in enumerate(todo):
            path = find_video_file(videos_dir, name)
            if last[0] != path:
                values, fps = video_audio_features(path, model, smile)
                last = (path, (np.arange(1, len(values) + 1, dtype=np.int64), values, fps))
            frames, values, fps = last[1]
            writer.write(name, frames, {features: values}, extra={"fps": np.float64(fps)})
            frames_done += len(frames)
            progress.update(i + 1)
    finally:
        if smile is not None:
            smile.close()
    return {
        "path": writer.path,
        "videos_done": len(todo),
        "videos_skipped": len(names) - len(todo),
        "frames": frames_done,
        "outputs": dict(writer.dims or {}),
    }
