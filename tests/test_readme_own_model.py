"""The README's "Build your own model" example runs as written, at tiny size."""

import json
import os
import re

import keras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example():
    """The Python block under the README's "Build your own model" heading."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("## Build your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_build_your_own_model_example_trains_and_saves(demo_root, tmp_path):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    run_dir = str(tmp_path / "own")
    code = (code.replace('"demo/data"', repr(demo_root))
            .replace('"runs/regnet_avgmax"', repr(run_dir))
            .replace("epochs=3", "epochs=1")
            .replace("image_size=64", "image_size=32")
            .replace('{"name": "regnety_400mf"}', '{"name": "regnety_400mf", "depths": [1, 1, 1, 1], '
                     '"widths": [8, 16, 24, 32], "group_width": 8, "stem_width": 8}'))
    assert "epochs=1" in code and '"depths": [1, 1, 1, 1]' in code
    exec(compile(code, "README.md", "exec"), {})
    with open(os.path.join(run_dir, "metrics.json")) as f:
        report = json.load(f)
    assert {"va_score", "expr_f1", "au_f1", "score"} <= set(report["validation"])
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert model.schema.edition == "abaw3"
