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


def build_tiny_llama(tokenizer, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised LlamaForCausalLM sized for unit tests (fp32, deterministic for a seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
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
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model
