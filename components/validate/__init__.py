"""The `validate` stage."""
