"""Evaluation: measuring generated images against their prompts."""
