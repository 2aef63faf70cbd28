"""Pipelines (recipes) composed from the stage components."""
