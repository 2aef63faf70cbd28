"""The `rl` stage."""
