"""Item feature tables computed once per catalogue and cached as .npy: text encoders and image features.

Each table is an array aligned to a given item order (`text_encoders.item_text_embeddings`,
`image_features.cached_image_features`); the MSE head and item tokens read them, never the encoders directly.
"""
