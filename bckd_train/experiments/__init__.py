"""Experiments driven through the training package, each run as ``python -m bckd_train.experiments.<name>``."""
