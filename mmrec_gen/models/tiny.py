"""Tiny random models built in-process from real configs, for fast tests of every code path.

The tokenizer is a byte-level BPE trained locally on a small built-in corpus (no hub access), with the
ChatML special tokens and chat template SmolLM2 uses, so prompts render exactly like the real model's.
"""

from __future__ import annotations

import string

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a recommender system. The user has watched the following movies, oldest first.",
    "Rank the candidate movies from most to least likely to be watched next. Answer with the letters only.",
    "Candidates: A. The Matrix (1999) B. Toy Story (1995) C. Heat (1995) D. Jumanji (1995)",
    "rating 4.0 out of 5; genres: Action|Sci-Fi|Comedy|Drama|Romance|Thriller|Animation|Children",
    "Explain in one or two sentences why the user would enjoy this item, citing movies they watched.",
    "Would the user enjoy the item? Answer Yes or No. " + " ".join(string.ascii_uppercase),
    "A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q, R, S, T, U, V, W, X, Y, Z",
    "the a an of and in to for with is was on by it this that from red blue green forest space robot",
]


def build_tiny_tokenizer(vocab_size: int = 600):
    """A PreTrainedTokenizerFast with ChatML special tokens; every capital letter is a single token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama_config(tokenizer, *, hidden_size: int = 32, num_layers: int = 2, tie_word_embeddings: bool = True):
    """The LlamaConfig of the tiny language models (4 heads, 2 KV heads, a 4,096-token context) for `tokenizer`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )


def build_tiny_llama(tokenizer, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised LlamaForCausalLM sized for unit tests (fp32, deterministic for a seed)."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


# -- a tiny LLaVA (CLIP vision tower + Llama language model), built in-process like the tiny Llama --------------
IMAGE_TOKEN = "<image>"
# LLaVA-HF's chat templates take a message's content as a string or as a list of {"type": "text"|"image"} blocks;
# this one is ChatML (as the tiny tokenizer) with one IMAGE_TOKEN per image block.
MM_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}{{ '<image>' }}"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8  # (32 / 8)^2 = 16 image tokens per image


def build_tiny_llava_processor():
    """A LlavaProcessor: the tiny tokenizer plus an IMAGE_TOKEN special token, a PIL CLIP image processor (no
    torchvision needed) at 32x32 and the multimodal ChatML template."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = MM_CHATML_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",  # drops the CLS feature ...
        num_additional_image_tokens=1,  # ... that the CLIP tower adds, so the counts match
        chat_template=MM_CHATML_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_tiny_llava(processor, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised LlavaForConditionalGeneration: a 2-layer CLIP vision tower, LLaVA's mlp2x_gelu
    projector and a 2-layer Llama sized for unit tests (fp32, deterministic for a seed)."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, projection_dim=hidden_size,
    )  # fmt: skip
    text = tiny_llama_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    return model


def save_tiny_llava(folder) -> str:
    """Write the tiny LLaVA and its processor to `folder` (an HF model folder, loadable as `--model folder`)."""
    processor = build_tiny_llava_processor()
    build_tiny_llava(processor).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)


TINY_GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32]]


def save_tiny_llava_next(folder) -> str:
    """A tiny random LlavaNextForConditionalGeneration ("anyres": an image becomes a base view plus tiles picked by
    its aspect ratio, so the token count differs per image) and its processor, written to `folder`."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = build_tiny_llava_processor().tokenizer
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_grid_pinpoints=TINY_GRID_PINPOINTS,
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=MM_CHATML_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE, projection_dim=32,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_grid_pinpoints=TINY_GRID_PINPOINTS,
    )  # fmt: skip
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)


# Idefics3's processor wraps each image in these tokens ("<fake_token_around_image><global-img><image>...") and tags
# the tiles of a split image with <row_i_col_j>.
IDEFICS3_TOKENS = (
    "<fake_token_around_image>", IMAGE_TOKEN, "<end_of_utterance>", "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)  # fmt: skip


def save_tiny_idefics3(folder, *, hidden_size: int = 256) -> str:
    """A tiny random Idefics3ForConditionalGeneration (the SmolVLM architecture: a SigLIP-style tower, pixel shuffle
    by 2 and a linear connector, a Llama language model) and its processor, written to `folder`. An image is one
    32x32 view (no tiling) of (32 / 8)^2 / 2^2 = 4 image tokens, wrapped in the processor's marker tokens.

    vLLM serves this architecture without torchvision (its LLaVA code imports it), so the vLLM backend's image tests
    use this model; `hidden_size` 256 with 4 heads gives the language model vLLM's smallest CPU attention head (64).
    The output layer is not tied to the embeddings: a random tied model only repeats its last input token."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(IDEFICS3_TOKENS)}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = MM_CHATML_TEMPLATE
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": TINY_IMAGE_SIZE},
        max_image_size={"longest_edge": TINY_IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=MM_CHATML_TEMPLATE
    )
    vision = Idefics3VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
    )  # fmt: skip
    text = tiny_llama_config(tokenizer, hidden_size=hidden_size, tie_word_embeddings=False)
    config = Idefics3Config(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        scale_factor=2, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)
