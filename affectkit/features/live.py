"""Per-frame features of frames no cache holds: the live counterpart of a feature cache.

A model of cached features (`input_kind="features"`: do2020's temporal stage, liu2023's
encoders) trains on caches; on a new video (`affectkit predict`) each cache is replaced by
its *live source*, which computes the same features from the video's faces and sound:

    VisualFeatures   face crops of one view and size -> the extractor's outputs (pooled
                     over space, as `extract_features` stores them)
    AudioFeatures    the video's audio track -> one vector per frame (`video_audio_features`,
                     the function that made the cache)
    live_source      a `FeatureCache` -> its live source, from the manifest
    LiveFeatures     a model's feature sources, as `datasets` reads them (`{input: (source,
                     [names])}`, a source, or a list concatenated), computed live: per face,
                     `{input: vector}`

Example:
>>> features = LiveFeatures([live_source(FeatureCache("cache/visual")),
...                          live_source(FeatureCache("cache/logmel"))])
>>> features.start("talk.mp4")                        # reads the audio track
>>> features({("aligned", 112): crops}, frame_indices)  # {"features": (n, 400 + 80)}
"""

import numpy as np

from affectkit.features.cache import FeatureCache


class VisualFeatures:
    """The outputs `outputs` of a visual extractor on face crops of `view` at `image_size`,
    normalised by `normalization` (`affectkit.data.pipeline.normalize_images`)."""

    def __init__(self, model, view, image_size, normalization="unit", outputs=None):
        self.model, self.view, self.image_size = model, view, int(image_size)
        self.normalization = normalization
        self.outputs = None if outputs is None else tuple(outputs)

    def start(self, path):
        """Readies a new input (a video file's `path`, or None for images); a subclass may
        pick its model by the input here."""

    @property
    def crop(self):
        """`(view, image_size)` of the crops this source reads."""
        return (self.view, self.image_size)

    def __call__(self, crops):
        """dict output name -> float32 `(n, dim)` of uint8 crops `(n, size, size, 3)`."""
        from affectkit.data.pipeline import normalize_images
        from affectkit.features.extraction import _named_outputs, _pool

        result = self.model(normalize_images(crops, self.normalization), training=False)
        names = None if isinstance(result, dict) else self.outputs
        return {name: _pool(values)[0]
                for name, values in _named_outputs(result, names, self.model).items()}


class AudioFeatures:
    """An audio cache's features (`model`: its manifest's settings) of a video's frames."""

    def __init__(self, model, outputs):
        self.model, self.outputs = dict(model), tuple(outputs)
        self.values, self.path = None, None

    def start(self, path):
        """Computes the features of every frame of the video file `path`."""
        from affectkit.features.audio import video_audio_features

        self.values, _ = video_audio_features(path, self.model)
        self.path = path

    def __call__(self, frame_indices):
        """dict output name -> `(n, dim)` of 0-based frame indices (past the end: the last)."""
        if self.values is None:
            raise ValueError("The model reads audio features, which only a video file has; "
                             "expected a video (images have no sound).")
        rows = np.minimum(np.asarray(frame_indices, np.int64), len(self.values) - 1)
        return {self.outputs[0]: self.values[rows]}


def live_source(cache):
    """The live source of a feature cache (a `FeatureCache` or its folder), from its
    manifest: a visual cache's extractor rebuilt (`extraction.cache_extractor`), an audio
    cache's settings."""
    from affectkit.features.extraction import cache_extractor

    if not isinstance(cache, FeatureCache):
        cache = FeatureCache(cache)
    manifest = cache.manifest
    if manifest.get("modality") == "audio":
        return AudioFeatures(manifest["model"], cache.outputs)
    return VisualFeatures(cache_extractor(cache), cache.view,
                          int((manifest.get("image_size") or [112])[0]),
                          manifest.get("normalization"), cache.outputs)


def _parts(source):
    """`[(live source, names or None), ...]` of a source as `feature_matrix` takes them."""
    if isinstance(source, list):
        return [part for item in source for part in _parts(item)]
    if isinstance(source, tuple) and len(source) == 2:
        return [(source[0], list(source[1]))]
    return [(source, None)]


class LiveFeatures:
    """A features model's inputs computed live, frame by frame (see the module docstring).

    Args:
        sources: dict model input -> source, or one source (the input `"features"`); a
            source is a live source, `(live source, [output names])`, or a list of them,
            concatenated in order (visual then audio, as the caches were).
    """

    def __init__(self, sources):
        if not isinstance(sources, dict):
            sources = {"features": sources}
        self.inputs = {name: _parts(source) for name, source in sources.items()}
        unique = {id(live): live for parts in self.inputs.values() for live, _ in parts}
        self.sources = list(unique.values())
        self.crops = sorted({s.crop for s in self.sources if isinstance(s, VisualFeatures)})
        self.audio = [s for s in self.sources if isinstance(s, AudioFeatures)]

    def start(self, path=None):
        """Readies a new input: a video file's audio, or (`None`) images, which have none."""
        if path is None and self.audio:
            raise ValueError("The model reads audio features, which only a video file has; "
                             "expected videos (images have no sound).")
        for source in self.sources:
            if not isinstance(source, AudioFeatures) or source.path != path:
                source.start(path)

    def __call__(self, crops, frame_indices):
        """dict model input -> float32 `(n, dim)` for `n` faces: `crops` maps each
        `(view, size)` of `self.crops` to their uint8 crops, `frame_indices` their frames."""
        computed = {}
        for source in self.sources:
            if isinstance(source, VisualFeatures):
                computed[id(source)] = source(crops[source.crop])
            else:
                computed[id(source)] = source(frame_indices)
        out = {}
        for name, parts in self.inputs.items():
            columns = []
            for live, names in parts:
                values = computed[id(live)]
                columns += [values[key] for key in (names or live.outputs or list(values))]
            out[name] = np.concatenate(columns, axis=1).astype(np.float32)
        return out
