"""Llama 3.2 Vision (Mllama): one `<|image|>` token per image; the model attends to the images by cross-attention.

The text holds a span of one token per image. What ties text to images is the `cross_attention_mask`
(batch, tokens, images, tiles) that `MllamaProcessor` builds from the text: a token attends to every tile of the images
of the latest run of back-to-back `<|image|>` tokens at or before it (the mask rows of tokens before a row's first
image are empty). A window carries exactly the images whose `<|image|>` it holds (their `pixel_values`,
`aspect_ratio_ids`, `aspect_ratio_mask`), and the collator builds its mask from the window's own tokens, so the
window's text attends to the images it carries, as the processor would make it for that window's text alone.

Layouts: the processor puts its rows first (`pixel_values` (rows, images, tiles, 3, H, W)); a split row keeps one
entry per image along axis 0, as every other family (`pixel_values[0]` of the processor's output for the row), and the
collator puts the rows back first, images padded per row as the image processor pads them.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ConfigError, PixelMismatchError
from ..spans import IMAGE
from ._base import FamilyAdapter, register

# the processor's per-image tensors and their dimensions per image: (tiles, 3, H, W), (), (tiles,)
PER_IMAGE = {"pixel_values": 4, "aspect_ratio_ids": 0, "aspect_ratio_mask": 1}


@register
class Mllama(FamilyAdapter):
    name = "mllama"
    classes = ("MllamaProcessor",)
    kind = "run"
    image = "attr:image_token"
    bos = True
    tensor_streams = (("aspect_ratio_ids", IMAGE), ("aspect_ratio_mask", IMAGE))
    count_rule = "fixed"
    sizes_recipe = "one_token"

    def build_spec(self):
        return replace(super().build_spec(), tokens_per_image=1)

    def row_tensors(self, tensors, images, processor_kwargs):
        # the processor's output for one row has its row axis first: one entry per image along axis 0 instead
        return {k: v[0] if k in PER_IMAGE and v.ndim == PER_IMAGE[k] + 2 else v for k, v in tensors.items()}

    def items(self, spans, tensors, images, *, row=None):
        _check_layout(tensors, row)
        return spans

    def item_tokens(self, tensors, tiles=None):
        _check_layout(tensors, None)
        return super().item_tokens(tensors, tiles)

    def image_outputs(self, out, images_per_row):
        """One entry per image along axis 0: each row's own images, without the image processor's padding images."""
        import torch

        return {k: torch.cat([v[r, :n] for r, n in enumerate(images_per_row)]) if k in PER_IMAGE else v
                for k, v in out.items()}

    def model_inputs(self, batch, media):
        """The rows' images padded per row as the image processor pads them, and the `cross_attention_mask` the
        processor builds for the batch's own tokens (`cross_attention_mask`); nothing for a batch without images."""
        import torch

        rows = [m.tensors for m in media.rows]
        counts = [int(t["pixel_values"].shape[0]) if "pixel_values" in t else 0 for t in rows]
        if not any(counts):
            return {}
        missing = [r for r, (t, n) in enumerate(zip(rows, counts)) if n and not set(PER_IMAGE) <= set(t)]
        if missing:
            t = rows[missing[0]]
            raise PixelMismatchError(
                f"batch row {missing[0]} carries {sorted(k for k in PER_IMAGE if k in t)} but Mllama's model needs "
                f"{sorted(PER_IMAGE)} for each image: keep every per-image tensor the processor returned, or give "
                "the window's images instead of its pixels", row=missing[0],
            )
        like = rows[counts.index(max(counts))]
        out = {}
        for key in PER_IMAGE:
            full = torch.zeros((len(rows), max(counts), *like[key].shape[1:]), dtype=like[key].dtype)
            for r, (t, n) in enumerate(zip(rows, counts)):
                if n:
                    full[r, :n] = t[key]
            out[key] = full
        out["aspect_ratio_mask"][..., 0] = 1  # the image processor marks the first tile of a padding image too
        real = torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]
        tiles = out["aspect_ratio_mask"].sum(-1) * real
        out["cross_attention_mask"] = cross_attention_mask(batch["input_ids"], self.spec.image_token_id, tiles,
                                                           int(out["aspect_ratio_mask"].shape[-1]))
        return out

    def position_ids(self, batch, starts, model=None):
        """Refused: a packed row would need a cross-attention mask per window (not built here)."""
        raise ConfigError(
            f"packed Mllama rows (batch of {tuple(batch['input_ids'].shape)} tokens with several windows or "
            "padding_free) are not supported: each window's text attends to its own images through a "
            "cross_attention_mask that is built per row, not per window; collate Mllama windows unpacked "
            "(no pack_windows, padding_free=False)"
        )

    def size_inputs(self, expander, sizes):
        return {}, {}  # the processor leaves `<|image|>` as it is, whatever the image's size


def cross_attention_mask(input_ids, image_token_id: int, tiles, max_tiles: int):
    """The `cross_attention_mask` `MllamaProcessor` builds for right-padded token rows, in whole-tensor torch.

    A token attends to every tile of each image of the latest run of back-to-back image tokens at or before it, from
    the image's own token on; tokens before a row's first image attend to none (the processor's
    `get_cross_attention_token_mask` and `convert_sparse_cross_attention_mask_to_dense`).

    Args:
        input_ids: `(B, L)` token ids.
        image_token_id: the `<|image|>` id.
        tiles: `(B, I)` tiles of the k-th image of each row (0 past a row's images).
        max_tiles: the size of the tile axis (the image processor's `max_image_tiles`).

    Returns:
        `(B, L, I, max_tiles)` int64, 1 where a token attends to a tile.

    Example:
        >>> import torch
        >>> m = cross_attention_mask(torch.tensor([[1, 9, 9, 2, 9, 3]]), 9, torch.tensor([[1, 2, 1]]), 2)
        >>> m[0, :, :, 0].T.tolist(), m[0, :, 1, 1].tolist()
        ([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], [0, 0, 1, 1, 0, 0])
    """
    import torch

    image = input_ids == image_token_id
    opens = image & ~torch.nn.functional.pad(image[:, :-1], (1, 0), value=False)
    run = torch.cumsum(opens, 1)  # (B, L): which run of images a token follows (0: none yet)
    n_rows, length = input_ids.shape
    n_images = tiles.shape[1]
    where = torch.full((n_rows, n_images), length, dtype=torch.int64, device=input_ids.device)
    image_run = torch.full((n_rows, n_images), -1, dtype=torch.int64, device=input_ids.device)
    r, p = image.nonzero(as_tuple=True)
    k = (torch.cumsum(image, 1) - 1)[r, p]
    keep = k < n_images
    where[r[keep], k[keep]] = p[keep]
    image_run[r[keep], k[keep]] = run[r[keep], p[keep]]
    position = torch.arange(length, device=input_ids.device)
    attends = (position[None, :, None] >= where[:, None, :]) & (run[:, :, None] == image_run[:, None, :])
    tile_on = torch.arange(max_tiles, device=input_ids.device)[None, None, :] < tiles.to(input_ids.device)[:, :, None]
    return (attends[..., None] & tile_on[:, None]).to(torch.int64)


def _check_layout(tensors, row):
    """Refuse per-image tensors that still have the processor's row axis first."""
    pv = tensors.get("pixel_values") if tensors else None
    if pv is not None and pv.ndim != PER_IMAGE["pixel_values"] + 1:
        raise PixelMismatchError(
            f"pixel_values of shape {tuple(pv.shape)} has {pv.ndim} dimensions; an Mllama row carries "
            f"{PER_IMAGE['pixel_values'] + 1} (images, tiles, 3, height, width): give the processor's output for the "
            "row without its row axis (pixel_values[0], aspect_ratio_ids[0], aspect_ratio_mask[0])", row=row,
        )
