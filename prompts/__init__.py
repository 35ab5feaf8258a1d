"""Prompt templates shipped as package data (`mmrec_gen.prompts` inside the wheel)."""
