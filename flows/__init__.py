"""Prefect flows: ingest, score, build, train and the end-to-end pipeline."""
