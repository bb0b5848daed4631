"""affectkit: multi-task facial affect analysis (ABAW / Aff-Wild2) with Keras 3.

Importing the package registers every custom layer, loss and metric, so that a saved
`model.keras` reloads with `keras.saving.load_model(path)` in default safe mode.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from affectkit import losses, metrics  # noqa: E402,F401
from affectkit.labels import LabelSchema, get_schema  # noqa: E402,F401
from affectkit.models import backbones, layers  # noqa: E402,F401

__version__ = "0.1.0"
