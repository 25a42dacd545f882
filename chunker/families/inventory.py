"""Every image-text-to-text processor class the installed transformers registers, and what chunker does with it.

`inventory()` reads transformers' own auto mappings (the model types of `AutoModelForImageTextToText` and their
processor classes), so it follows whichever transformers is installed; each class is then

- "written": a family adapter in `chunker/families/` names it (`FamilyAdapter.classes`);
- "refused": `chunker.families.refused.REFUSED` says why no window can be right for it (a named error);
- "learned": no adapter names it, its plain bracket grammar is learned from the processor (`chunker.families.learned`),
  and `LEARNED` names the tests that prove it on the real processor with the checkpoint's real template;
- "pending": no adapter yet; `PENDING` says what its grammar is. `adapter_for` learns it when that grammar is a
  plain bracket (`chunker.families.learned`), and refuses it with what the probe saw otherwise.

`tests/test_family_inventory.py` fails when transformers adds a class that is none of these, so the list cannot
drift; `python -m chunker.families.inventory` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

_GRID = ("`image_token × prod(grid_thw)/merge²` (Qwen-style; brackets from the template or the processor): learned "
         "when the template brackets it with special tokens; not built offline with a real template here yet")

# class -> what its grammar is and why no adapter is written yet (read from the installed processor's source)
PENDING = {
    "Apertus1p5Processor": "`<boi>H*W<wrapper>` then rows of image tokens joined by end-of-line tokens, then `<eoi>`; "
                           "audio spans too",
    "AriaProcessor": "`<|img|>` runs of crops × tokens per crop inside the template's brackets, with a pixel_mask "
                     "tensor the collator does not carry yet",
    "AyaVisionProcessor": "tiles `<|START_OF_IMG|> (<|IMG_TILE_k|> <|IMG_PATCH|>×n)… <|IMG_TILE_GLOBAL|> "
                          "<|IMG_PATCH|>×n <|END_OF_IMG|>` (an InternVL-like tile rule)",
    "ChameleonProcessor": "fixed bracket `<racm3:break> <image>×N <eoss>`: learned; no real chat template vendored",
    "Cohere2VisionProcessor": "`<|START_OF_IMG|> (<|IMG_PATCH|>×p² <|IMG_LINE_BREAK|>)×tiles <|END_OF_IMG|>`",
    "CohereCompassProcessor": _GRID,
    "Cosmos3EdgeProcessor": _GRID,
    "DeepseekOcr2Processor": "global and local tile queries with newline tokens, counts from settings",
    "DeepseekVLHybridProcessor": "fixed run `<image_placeholder>×N` plus high-resolution pixel tensors",
    "DeepseekVLProcessor": "fixed run `<image_placeholder>×N`",
    "Dots3NoteProcessor": _GRID,
    "Emu3Processor": "`<|image start|>H*W<|image token|> <|image|>×h·(w+1) <|extra_eof|><|image end|>`: text inside "
                     "the bracket; VQ image tokens",
    "Ernie4_5_VLMoeProcessor": _GRID,
    "Exaone4_5_Processor": _GRID,
    "Gemma3nProcessor": "fixed bracket like Gemma 3: learned for images (proven on pre-tokenized rows, "
                        "tests/test_family_learned.py); its audio spans `<audio_soft_token>×N` are refused by name",
    "Gemma4UnifiedProcessor": "the Gemma 4 grammar in its own class; not built offline here yet",
    "Glm46VProcessor": _GRID,
    "Glm5NextProcessor": _GRID,
    "Granite4VisionProcessor": "LLaVA-NeXT-style runs counted from image sizes, in its own class",
    "GraniteDoclingProcessor": "Idefics3-style tile groups, tiles of fine or coarse size",
    "HYV4VLProcessor": _GRID,
    "HunYuanVLProcessor": "rows of image tokens with one extra column token each (h·(w+1)+2) from image_grid_thw",
    "HyperCLOVAXVisionV2Processor": _GRID,
    "Idefics2Processor": "`<fake_token_around_image> <image>×S` blocks whose fake tokens are shared by back-to-back "
                         "images and crops",
    "Inkling2Processor": "`image_token × prod(grid_thw)` (no merge)",
    "InklingProcessor": "not probed here",
    "JanusProcessor": "fixed bracket `<begin_of_image> <image_placeholder>×N <end_of_image>`: learned (proven on "
                      "pre-tokenized rows with a tiny model, tests/test_family_learned.py); no real chat template "
                      "vendored for conversation rows",
    "Kimi_K25Processor": _GRID,
    "Lfm2VlProcessor": "tiles and a thumbnail, each `<|img_row_r_col_c|> <image>×n` inside "
                       "`<|image_start|>…<|image_end|>`, with spatial_shapes and pixel_attention_mask tensors",
    "Lfm3VlProcessor": _GRID,
    "LightOnOcrProcessor": "Pixtral-like `[IMG]` rows from image_sizes",
    "Llama4Processor": "tiles separated by `<|tile_x_separator|>` / `<|tile_y_separator|>` and a global image, inside "
                       "`<|image_start|>…<|image_end|>`, counts from aspect ratios",
    "MiniCPMOcrProcessor": "slices `<slice>…</slice>` with a global image, counts from grids",
    "MiniCPMV4_6Processor": "slices `<slice>…</slice>` with a global image, counts from grids",
    "MiniCPMV4_7Processor": "slices `<slice>…</slice>` with a global image, counts from grids",
    "MiniMaxM3VLProcessor": _GRID,
    "Molmo2Processor": "low- and high-resolution crops as rows `<im_patch>×w <im_col>` inside `<im_start>…<im_end>`",
    "MuseGlimmerProcessor": _GRID,
    "MuseSparkProcessor": _GRID,
    "NemotronH_Omni_Reasoning_V3Processor": "`<img> <image>×N </img>` from image_grid_hw; audio spans too",
    "Ovis2Processor": "`<IMG_START> <IMG_ATOM>×S <IMG_GRID>` then grid cells split by `<IMG_COL>` / `<IMG_ROW>`",
    "PPChart2TableProcessor": "its processor passes text and images through without expanding an image token",
    "PerceptionLMProcessor": "runs of `<|image|>` (tiles × tokens per tile) without brackets",
    "QianfanOCRProcessor": "InternVL-like `<img> <IMG_CONTEXT>×S·patches </img>`",
    "Step3p7Processor": "local patches `<patch_start>…<patch_end>` and a global `<im_start>…<im_end>` per image",
    "UnlimitedOcrProcessor": "one run of `<image>` (global and local queries with row ends) from patches_grid",
    "VideoLlama3Processor": _GRID,
    "VideoLlavaProcessor": "LLaVA-style `<image>` runs and `<video>` runs of frames",
}

# class -> the learned grammar and the tests that prove it (the class is in no adapter's `classes`)
LEARNED = {
    "Glm4vProcessor": "learned `<|begin_of_image|> <|image|>×(t·h·w/merge²) <|end_of_image|>` (grid count): GLM-4.1V's "
                      "real processor with GLM-4.1V-9B-Thinking's real template in the shared contract "
                      "(tests/test_families.py) and a tiny Glm4vForConditionalGeneration (tests/test_family_models_d.py)",
}


@dataclass(frozen=True)
class Entry:
    """One processor class: the model types that use it, its status and the family or the reason, and whether an image
    processor of its model types has a PIL backend (it builds offline without torchvision)."""

    processor: str
    model_types: tuple[str, ...]
    status: str  # "written", "refused", "learned" or "pending"
    detail: str
    pil: bool = False


def chat_processors() -> dict[str, tuple[str, ...]]:
    """Processor class name -> model types, for every model type `AutoModelForImageTextToText` knows (types without a
    registered processor class are left out: they use another type's processor)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    out: dict[str, list[str]] = {}
    for model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        name = PROCESSOR_MAPPING_NAMES.get(model_type)
        if name:
            out.setdefault(name, []).append(model_type)
    return {k: tuple(v) for k, v in sorted(out.items())}


def written() -> dict[str, str]:
    """Processor class name -> the family adapter that names it."""
    from ._base import ADAPTERS

    return {name: cls.name for cls in ADAPTERS for name in cls.classes}


def inventory() -> list[Entry]:
    """Every image-text-to-text processor class of the installed transformers, with its status.

    Returns:
        One `Entry` per class, sorted by name; a class that is none of written, refused, learned or pending has status
        "unknown" (the inventory test fails on it).

    Example:
        >>> {e.processor: e.status for e in inventory()}["Gemma3Processor"]
        'written'
    """
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    from .refused import REFUSED

    families = written()
    out = []
    for name, types in chat_processors().items():
        pil = any("pil" in (IMAGE_PROCESSOR_MAPPING_NAMES.get(t) or {}) for t in types)
        if name in families:
            out.append(Entry(name, types, "written", families[name], pil))
        elif name in REFUSED:
            out.append(Entry(name, types, "refused", REFUSED[name], pil))
        elif name in LEARNED:
            out.append(Entry(name, types, "learned", LEARNED[name], pil))
        elif name in PENDING:
            out.append(Entry(name, types, "pending", PENDING[name], pil))
        else:
            out.append(Entry(name, types, "unknown", "", pil))
    return out


if __name__ == "__main__":
    import collections

    import transformers

    rows = inventory()
    print(f"transformers {transformers.__version__}: {len(rows)} image-text-to-text processor classes, "
          f"{dict(collections.Counter(e.status for e in rows))}, {sum(e.pil for e in rows)} with a PIL image processor")
    for e in rows:
        print(f"{e.status:8} {'pil' if e.pil else '   '} {e.processor:38} {','.join(e.model_types):36} {e.detail[:80]}")
