"""Thin Prefect tasks over the plain functions in `site_backup`."""
