"""Evaluation against human judgements, composite scores, reward-hacking warnings and HTML reports.

>>> from prefscore.evaluation import evaluate, EvalConfig, write_report
>>> result = evaluate("pairs.csv", metrics=["pickscore", "hpsv2"])        # or scores="scores.csv"
>>> result.table                                                          # estimates with 95% CIs
>>> write_report("report.html", evaluation=result)
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "EvalConfig": "agreement",
    "EvaluationResult": "agreement",
    "choose_tie_threshold": "agreement",
    "evaluate": "agreement",
    "inversion_scores": "agreement",
    "tie_credits": "agreement",
    "Calibration": "composite",
    "CalibrationError": "composite",
    "Component": "composite",
    "CompositeMetric": "composite",
    "Normaliser": "composite",
    "calibrate": "composite",
    "fit_weights": "composite",
    "write_report": "report",
    "ScoreLookupError": "scores",
    "ScoreTable": "scores",
    "compute_scores": "scores",
    "BootstrapPlan": "stats",
    "Interval": "stats",
    "fit_logistic": "stats",
    "krcc": "stats",
    "choose_resampling": "stats",
    "min_units": "stats",
    "p_value_floor": "stats",
    "paired_test": "stats",
    "plcc": "stats",
    "srcc": "stats",
    "Finding": "warnings",
    "alignment_vs_aesthetic": "warnings",
    "compare_sets": "warnings",
    "disagreements": "warnings",
    "pinned_scores": "warnings",
    "reward_hacking": "warnings",
    "run_checks": "warnings",
})

__all__ = [
    "BootstrapPlan", "Calibration", "CalibrationError", "Component", "CompositeMetric", "EvalConfig",
    "EvaluationResult", "Finding", "Interval", "Normaliser", "ScoreLookupError", "ScoreTable",
    "alignment_vs_aesthetic", "calibrate", "choose_resampling", "choose_tie_threshold", "compare_sets", "compute_scores", "disagreements",
    "evaluate", "fit_logistic", "fit_weights", "inversion_scores", "krcc", "min_units", "p_value_floor", "paired_test", "pinned_scores", "plcc",
    "reward_hacking", "run_checks", "srcc", "tie_credits", "write_report",
]
