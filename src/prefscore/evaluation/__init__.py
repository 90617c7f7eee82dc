"""Evaluation against human judgements, composite scores, reward-hacking warnings and HTML reports.

>>> from prefscore.evaluation import evaluate, EvalConfig, write_report
>>> result = evaluate("pairs.csv", metrics=["pickscore", "hpsv2"])        # or scores="scores.csv"
>>> result.table                                                          # estimates with 95% CIs
>>> write_report("report.html", evaluation=result)
"""

from .agreement import EvalConfig, EvaluationResult, choose_tie_threshold, evaluate, inversion_scores, tie_credits
from .composite import Calibration, CalibrationError, Component, CompositeMetric, Normaliser, calibrate, fit_weights
from .report import write_report
from .scores import ScoreLookupError, ScoreTable, compute_scores
from .stats import BootstrapPlan, Interval, fit_logistic, krcc, paired_test, plcc, srcc
from .warnings import (
    Finding,
    alignment_vs_aesthetic,
    compare_sets,
    disagreements,
    pinned_scores,
    reward_hacking,
    run_checks,
)

__all__ = [
    "BootstrapPlan", "Calibration", "CalibrationError", "Component", "CompositeMetric", "EvalConfig",
    "EvaluationResult", "Finding", "Interval", "Normaliser", "ScoreLookupError", "ScoreTable",
    "alignment_vs_aesthetic", "calibrate", "choose_tie_threshold", "compare_sets", "compute_scores", "disagreements",
    "evaluate", "fit_logistic", "fit_weights", "inversion_scores", "krcc", "paired_test", "pinned_scores", "plcc",
    "reward_hacking", "run_checks", "srcc", "tie_credits", "write_report",
]
