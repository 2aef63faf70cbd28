"""Tests of the recipes (`pipelines/`): compiled specs, config resolution, end-to-end local runs."""
