"""Tests of the `deploy` stage (`components/deploy/`)."""
