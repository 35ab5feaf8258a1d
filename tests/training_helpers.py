"""Helpers of the training tests: a simulated kill after a checkpoint, an adapter's saved weights."""

from __future__ import annotations


class Killed(Exception):
    """A simulated kill of a training run (raised right after a checkpoint is written)."""


def kill_after_save(step: int):
    """A TrainerCallback that stops the run like a kill right after its checkpoint at `step` is on disk."""
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed(f"simulated kill after checkpoint-{step}")

    return KillAfterSave()


def adapter_state(folder) -> dict:
    """The saved weights of an item-token adapter, keyed without PEFT's prefixes (e.g. item_tokens.head.weight)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    return {k.replace("base_model.model.", "", 1): v for k, v in state.items()}
