"""Evaluation: metrics, plots, the evaluation folder and the HTML run report.

(Named `evaluation` so that `imgclf.evaluate` stays the API function.)
"""
