"""Scorers: per-record quality scores written to the store, keyed for caching."""
