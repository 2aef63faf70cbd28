"""The `distill` stage."""
