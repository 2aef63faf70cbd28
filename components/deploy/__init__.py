"""The `deploy` stage."""
