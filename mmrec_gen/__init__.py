"""mmrec-gen: (multimodal) LLMs as recommenders on one fixed evaluation protocol."""

__version__ = "0.1.0"
