"""Evaluation: the leave-one-task-out protocol, rank aggregation (Eq. 2), significance, reports.

- ``ranking``: score tables (method x task x seed), per-task ranks, average ranks, the
  selection of a method for a target task without its own rank, the 2-sigma rule.
- ``reports``: comparison tables (CSV, Markdown) and plots of per-task differences.
- ``protocol``: left-out task sets, transfer evaluation of backbones on tasks (feature
  extraction + linear SVM, fine-tuning), the LOTO loop around a pluggable pre-training step.
"""
