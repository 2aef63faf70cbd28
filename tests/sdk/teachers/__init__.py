"""Tests of `distilflow.teachers`: the teacher contract, its backends and the endpoint client."""
