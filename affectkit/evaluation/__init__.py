"""Evaluation against the ABAW challenges' own files, and reports of runs.

- `scoring`: scores prediction files in the official formats against Aff-Wild2
  annotations (`evaluate_files`, `format_scores`, `write_scores`); NumPy only.
- `challenge_files`: turns model outputs into those files (`decode_outputs`,
  `write_official_predictions`).
- `predictions`, `ensembles`, `reports`: a run's per-frame predictions, ensembles of
  finished runs, and the report table a run prints.
"""
