"""Scores in, judgements out: alert-level metrics, source-level policies, the evaluation report and its figures."""
