"""Prefect flows: they only wire the tasks together."""
