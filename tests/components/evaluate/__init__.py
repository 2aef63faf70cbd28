"""Tests of the `evaluate` stage (`components/evaluate/`)."""
