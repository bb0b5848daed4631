"""What a run directory records so that it can be reproduced: `config.json`.

    config.json   {"recipe", "preset", "config" (the resolved preset with every override),
                   "data" (the Aff-Wild2 folder), "seed", "versions" (Python and packages),
                   "annotations_sha1" (fingerprint of the annotation files read)}

`affectkit train RECIPE --config RUN_DIR/config.json` trains the same configuration again.
"""

import contextlib
import hashlib
import json
import os
import platform
import sys
from importlib import metadata

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks
    fcntl = None

from affectkit.data import affwild2

CONFIG_FILE = "config.json"
PACKAGES = ("affectkit", "tensorflow", "keras", "numpy", "pandas", "opencv-python-headless")


def package_versions():
    """Python's and the installed versions of the packages a run depends on."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def annotation_files(data, schema):
    """Every annotation file of a dataset folder: the per-task folders of both splits and the
    MTL files, as sorted paths relative to `data`."""
    paths = []
    for task in affwild2.TASKS:
        for split in ("train", "val"):
            for name in affwild2.task_dir_names(schema, task):
                folder = os.path.join(data, name, affwild2.split_dir_name(schema, split))
                if os.path.isdir(folder):
                    paths += [os.path.join(folder, f) for f in os.listdir(folder)
                              if f.endswith(".txt")]
        for split in ("train", "val"):
            for name in affwild2.mtl_file_names(split):
                if os.path.isfile(os.path.join(data, name)):
                    paths.append(os.path.join(data, name))
    return sorted(os.path.relpath(p, data) for p in set(paths))


def annotation_fingerprint(data, schema):
    """SHA-1 over the names and bytes of `annotation_files(data, schema)`."""
    digest = hashlib.sha1()
    for relative in annotation_files(data, schema):
        digest.update(relative.encode() + b"\0")
        with open(os.path.join(data, relative), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def write_run_config(run_dir, recipe, preset, config, data, schema):
    """Writes `config.json` (atomically) into `run_dir`; returns its content."""
    record = {
        "recipe": recipe,
        "preset": preset,
        "config": config,
        "data": None if data is None else os.path.abspath(data),
        "seed": config.get("seed"),
        "versions": package_versions(),
        "command": sys.argv,
        "annotations_sha1": None if data is None else annotation_fingerprint(data, schema),
    }
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, CONFIG_FILE), record)
    return record


def write_atomic(path, write):
    """Calls `write(partial)` for a file beside `path` of the same extension (`.keras`,
    `.weights.h5`, `.png`, ...), then renames it to `path`: a reader never sees half a
    file, and a kill midway leaves the previous one whole."""
    root, extension = os.path.splitext(path)
    if extension == ".h5" and root.endswith(".weights"):
        root, extension = root[: -len(".weights")], ".weights.h5"
    partial = f"{root}.partial{extension}"
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_json(path, value):
    """`value` as indented JSON in `path`, written whole (`write_atomic`)."""
    def dump(partial):
        with open(partial, "w") as f:
            json.dump(value, f, indent=2, default=_plain)
            f.write("\n")

    write_atomic(path, dump)


def write_text(path, text):
    """`text` in `path`, written whole (`write_atomic`)."""
    def dump(partial):
        with open(partial, "w") as f:
            f.write(text)

    write_atomic(path, dump)


def read_run_config(path):
    """The record of a `config.json` (or of the run directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected the config.json of a run "
                                "directory (every `affectkit train` run writes one).")
    with open(path) as f:
        try:
            record = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(record, dict) or not {"recipe", "config"} <= set(record):
        raise ValueError(f"{path}: expected a run config with 'recipe' and 'config' keys.")
    return record


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON.")


def config_digest(value, length=10):
    """A short SHA-1 of a JSON-able value (keys sorted): names a folder by the settings
    that decide its contents."""
    text = json.dumps(value, sort_keys=True, default=_plain)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def exclusive(folder):
    """Holds an exclusive lock on `folder` (the file `folder.lock` beside it) for the
    `with` block, so that processes sharing the folder (the trials of a search, say) build
    its contents one at a time; the next one then finds them done. Advisory, per machine
    (POSIX `flock`); a no-op where the platform has none."""
    folder = os.path.abspath(folder)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
