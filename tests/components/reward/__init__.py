"""Tests of the `reward` stage (`components/reward/`)."""
