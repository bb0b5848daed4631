"""liu2023_multimodal_ensemble: multimodal features, LSTM/transformer encoders and a vote ensemble (Liu et al., ABAW5 2023). Same as `affectkit train liu2023_multimodal_ensemble ...`; `--help` lists the options."""
import sys

from affectkit.cli import run_recipe_script

if __name__ == "__main__":
    sys.exit(run_recipe_script("liu2023_multimodal_ensemble"))
