"""The `reward` stage."""
