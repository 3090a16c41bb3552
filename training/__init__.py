"""Bundled trainers: SFT with UAL smoothing, RESCUE ranking, quality-aware reward model."""
