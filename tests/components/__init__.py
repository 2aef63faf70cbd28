"""Tests of the stages, one folder per stage (mirroring `components/`)."""
