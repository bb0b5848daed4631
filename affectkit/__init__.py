"""affectkit: multi-task facial affect analysis (ABAW / Aff-Wild2) with Keras 3.

`import affectkit` is light: it loads neither TensorFlow nor Keras, so the command line
and the NumPy parts (labels, Aff-Wild2 files, `affectkit.metrics`,
`affectkit.evaluation.scoring`) start in a fraction of a second.

A saved `model.keras` still reloads with `keras.saving.load_model(path)` in default safe
mode after only `import affectkit`, in either order of `import affectkit` and
`import keras`: the modules that register affectkit's custom objects
(`REGISTERING_MODULES`) are imported as soon as Keras is there.

- If Keras is already imported when affectkit is, they are imported right away.
- Otherwise a one-shot finder on `sys.meta_path` watches the imports of `keras`,
  `tensorflow` (which imports Keras itself) and affectkit's own modules. It wraps their
  loaders only to learn when each finishes executing (the module keeps its own loader).
  Once `keras` has finished and none of the watched imports is still running, it imports
  the registering modules with `importlib.import_module` and removes itself. Waiting for
  the outermost watched import keeps those modules from seeing a half-initialised
  TensorFlow, or a half-initialised affectkit module that imported Keras first (e.g.
  `import affectkit.models.backbones` in a fresh process). A registering module that
  fails to import is reported as a `RuntimeWarning`, so that `import keras` still works.

`KERAS_BACKEND` defaults to `tensorflow`.
"""

import contextlib
import importlib
import importlib.abc
import os
import sys
import threading
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

REGISTERING_MODULES = (
    "affectkit.losses",
    "affectkit.training.optimizers",
    "affectkit.streaming_metrics",
    "affectkit.models.layers",
    "affectkit.models.backbones",
    "affectkit.models.affect_model",
)


def _register_custom_objects():
    """Imports every module that registers custom Keras objects (Keras is imported).

    A module that fails to import is reported as a warning, so that the import of Keras
    (or TensorFlow) that triggered this still succeeds; importing that module directly
    raises its error.
    """
    for name in REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - reported, and raised on direct import
            warnings.warn(
                f"affectkit could not register the custom Keras objects of {name} "
                f"({type(error).__name__}: {error}); models that use them will not reload.",
                RuntimeWarning,
                stacklevel=2,
            )


class _WatchedLoader(importlib.abc.Loader):
    """Runs a module's own loader, and tells the finder when the module has executed.

    Every other loader method (`get_code`, `get_source`, ...; used by `python -m`)
    is the wrapped loader's.
    """

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_loader", "_finder"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        spec = module.__spec__
        module.__loader__ = spec.loader = self._loader  # the module keeps its own loader
        with self._finder.running():
            self._loader.exec_module(module)
        self._finder.module_executed(spec.name)


class _RegisterOnKerasImport(importlib.abc.MetaPathFinder):
    """One-shot finder: registers affectkit's custom objects once Keras is imported."""

    _WATCHED = ("keras", "tensorflow")

    def __init__(self):
        self._lock = threading.RLock()
        self._running = 0
        self._keras_executed = False
        self._done = False

    def find_spec(self, name, path=None, target=None):
        if self._done or not (name in self._WATCHED or name.startswith("affectkit.")):
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _WatchedLoader(spec.loader, self)
                return spec
        return None

    @contextlib.contextmanager
    def running(self):
        """Counts a watched module while it executes."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def module_executed(self, name):
        """Registers once `keras` has executed and no watched import is still running."""
        with self._lock:
            self._keras_executed = self._keras_executed or name == "keras"
            if self._done or not self._keras_executed or self._running:
                return
            self._done = True
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        _register_custom_objects()


if "keras" in sys.modules:
    _register_custom_objects()
else:
    sys.meta_path.insert(0, _RegisterOnKerasImport())
