"""Per-frame features computed once and stored per video: the feature cache and what fills it.

    cache.py       FeatureCache, CacheWriter, feature_matrix, nearest_positions
    extraction.py  visual extraction: extract_features, backbone_feature_model
    audio.py       audio features: log-mel, eGeMAPS (extract_audio_features)
"""
