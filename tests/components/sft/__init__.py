"""Tests of the `sft` stage (`components/sft/`)."""
