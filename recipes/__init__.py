"""The five published ABAW systems, one script per paper (`python recipes/NAME.py --help`).

Each recipe is also importable (`from recipes import zhang2020_mtanet`): a config of
hyperparameters (`PRESETS`) plus `build_model(config, schema)` and `train(config, data, out)`.
"""
