"""Tests of the `dpo` stage (`components/dpo/`)."""
