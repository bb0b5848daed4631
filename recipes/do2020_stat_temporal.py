"""do2020_stat_temporal: multi-task temporal statistical model (Do, Nguyen-Quynh & Kim, ABAW 2020). Same as `affectkit train do2020_stat_temporal ...`; `--help` lists the options."""
import sys

from affectkit.cli import run_recipe_script

if __name__ == "__main__":
    sys.exit(run_recipe_script("do2020_stat_temporal"))
