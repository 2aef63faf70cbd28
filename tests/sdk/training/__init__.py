"""Tests of `distilflow.training`: the shared config fields (the training runs are tested per stage)."""
