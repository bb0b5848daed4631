"""The report table a run prints: validation scores beside the chance baselines, and the
scores of the official prediction files."""

from affectkit.evaluation.scoring import format_scores
from affectkit.labels import get_schema

# (label, task, component) rows, in the order printed.
_ROWS = (
    ("VA valence CCC", "va", "valence"),
    ("VA arousal CCC", "va", "arousal"),
    ("VA (mean CCC)", "va", "score"),
    ("EXPR macro-F1", "expr", "f1"),
    ("EXPR accuracy", "expr", "accuracy"),
    ("EXPR score", "expr", "score"),
    ("AU mean F1", "au", "f1"),
    ("AU score", "au", "score"),
)


def format_report(report, schema=None):
    """The run's table: each ABAW component on validation (best epoch) and its chance
    baseline, the total, and the official files' scores."""
    schema = get_schema(schema or report["edition"])
    validation, chance = report["validation"], report.get("chance_baselines", {})
    tasks = [t for t in ("va", "expr", "au") if f"{t}_score" in validation]
    lines = [f"\nValidation, {schema.edition} (best epoch)            model   chance baseline"]
    for label, task, component in _ROWS:
        key = f"{task}_{component}"
        if task not in tasks or key not in validation:
            continue
        if component == "score" and task != "va" and not schema.expr_score_uses_accuracy:
            continue  # the score is the F1 above
        base = chance.get(task, {}).get(component)
        base = "      -" if base is None else f"{base:7.4f}"
        lines.append(f"  {label:<32s} {validation[key]:7.4f}   {base}")
    if len(tasks) > 1:
        total = sum(chance.get(t, {}).get("score", 0.0) for t in tasks)
        name = "sum (MTL P for ABAW3+)" if len(tasks) == 3 else "sum"
        lines.append(f"  {name:<32s} {validation['score']:7.4f}   {total:7.4f}")
    for task, scores in (report.get("official") or {}).items():
        lines.append(f"\nOfficial prediction files scored by affectkit.evaluation ({task}):")
        lines.append(format_scores(scores))
    return "\n".join(lines)
