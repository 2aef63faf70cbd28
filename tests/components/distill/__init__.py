"""Tests of the `distill` stage (`components/distill/`)."""
