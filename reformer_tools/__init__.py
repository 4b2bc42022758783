"""Inspect, convert and verify Trax Reformer checkpoints for Hugging Face Transformers."""

__version__ = "0.1.0"
