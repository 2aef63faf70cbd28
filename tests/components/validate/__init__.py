"""Tests of the `validate` stage (`components/validate/`)."""
