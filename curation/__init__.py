"""Data curation and preference-data quality pipeline for LLM post-training."""

__version__ = "0.1.0"
