"""Tests of `distilflow.client`: the CLI over the SDK."""
