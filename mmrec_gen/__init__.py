"""mmrec-gen: (multimodal) LLMs as recommenders on one fixed evaluation protocol.

Importing the package registers the item-token recommender (models/item_rec.py) with transformers' Auto classes,
so `AutoConfig` / `AutoModel.from_pretrained(folder)` load its folders. The registration waits until transformers
itself is imported (mmrec_gen/_auto.py), so that `import mmrec_gen` (and `mmrec --help`) stays instant.
"""

from mmrec_gen._auto import register_when_transformers_loads

__version__ = "0.1.0"

register_when_transformers_loads()
