"""Running trained models on new videos and images: video -> faces -> per-frame affect.

    video.py       streaming decode of videos and images (timestamps, rotation, bad files)
    detection.py   face detectors whose weights ship in pip packages (BlazeFace, MTCNN)
    alignment.py   the model's view (aligned or context crop) cut from a frame's landmarks
    tracking.py    detection every K frames, landmark tracking in between, stable face ids
    predictor.py   `predict_video` / `predict_images`: one DataFrame row per (frame, face)
    prediction_files.py  what `affectkit predict` writes: CSVs, ABAW submission files
    reports.py     plots of the predictions over time and the annotated overlay video
"""

from affectkit.inference.predictor import FacePredictor, predict_images, predict_video

__all__ = ["FacePredictor", "predict_images", "predict_video"]
