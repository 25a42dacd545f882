"""Shared pieces of the tiny model configs and their seeded construction (every `families_*` module)."""

from __future__ import annotations

HIDDEN = 32


def text_config(tok, **extra) -> dict:
    """A tiny decoder config (hidden 32, 2 layers, head_dim 8) sized to `tok`'s vocabulary."""
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HIDDEN // 4,
        "max_position_embeddings": 4096,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        **extra,
    }


def seeded_model(cls, config, seed: int, jitter_constants: bool = False):
    """`cls(config)` drawn under `seed` without touching the global RNG; float32, training mode.

    jitter_constants: add small noise to every parameter the init leaves constant (e.g. Gemma 3's zero
    projector), so image features reach the loss.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        if jitter_constants:
            with torch.no_grad():
                for param in model.parameters():
                    if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                        param.add_(torch.randn_like(param) * 0.02)
    return model.float().train()


def vision_config(image_size, patch_size, **extra) -> dict:
    """A tiny ViT-style vision tower config (hidden 32, 2 layers, 2 heads); `extra` adds or overrides keys."""
    return {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": image_size, "patch_size": patch_size, **extra}
