"""Launchers: run a training stage elsewhere than in this process and return the result it wrote."""
