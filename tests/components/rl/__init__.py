"""Tests of the `rl` stage (`components/rl/`)."""
