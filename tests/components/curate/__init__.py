"""Tests of the `curate` stage (`components/curate/`)."""
