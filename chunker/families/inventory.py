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

_GRID = "`image_token × (t·h·w/merge²)` (Qwen-style, grid count)"
# why a grid family is not learned yet (tests/test_family_learned_e.py shows the learner's refusals by name)
_NO_BRACKETS = (f"{_GRID}; its brackets come only from the checkpoint's chat template (neither the processor nor the "
                "config names them) and no byte-exact public copy was found: without it the probe sees bare runs and "
                "the learner refuses them by name")
_TORCHVISION = (f"{_GRID}; its image processor has only a torchvision backend, which does not load beside the CPU "
                "torch of these machines, so it is not built offline here")

# class -> what its grammar is and why no adapter is written yet (read from the installed processor's source)
PENDING = {
    "Apertus1p5Processor": "`<boi>H*W<wrapper>` then rows of image tokens joined by end-of-line tokens, then `<eoi>`; "
                           "audio spans too",
    "DeepseekOcr2Processor": "global and local tile queries with newline tokens, counts from settings",
    "Dots3NoteProcessor": f"{_NO_BRACKETS}; an audio feature extractor too (`<|audio_comp_pad|>`)",
    "Ernie4_5_VLMoeProcessor": f"{_GRID} inside the template's `<|IMAGE_START|>…<|IMAGE_END|>`, but its processor "
                               "also returns moe_mm_token_type_ids (1 on image tokens and their brackets), which the "
                               "model reads to route them to the vision experts; no window recomputes that column yet "
                               "(the collator would, as it does mm_token_type_ids), so the learner refuses the tensor "
                               "by name (tests/test_family_learned_e.py)",
    "Exaone4_5_Processor": _NO_BRACKETS,
    "Gemma4UnifiedProcessor": "the Gemma 4 grammar in its own class; not built offline here yet",
    "GraniteDoclingProcessor": "Idefics3's tile groups, except that a one-tile page is `<fake_token_around_image>"
                               "<row_1_col_1> <image>×S` with no global block (the tile span finder needs one) and the "
                               "fine route has 4·S tokens per tile; built offline (chunker.testing.families_f)",
    "HYV4VLProcessor": "`<|image_pad|>×(h/merge)·(w/merge + 1)` (one extra token per merged row: its "
                       "_get_num_multimodal_tokens counts it, its pixel rows follow the grid); brackets only from the "
                       "checkpoint's template, not found",
    "HunYuanVLProcessor": "`<image_start> <image>×(h·(w+1)+2) <image_end>` from image_grid_thw (the brackets come from "
                          "the template); the processor refuses a placeholder without them, so the grammar probe needs "
                          "a bracketed probe text, and its positions come from the model's own get_rope_index",
    "HyperCLOVAXVisionV2Processor": _NO_BRACKETS,
    "Inkling2Processor": "`image_token × prod(grid_thw)` (no merge) as bare runs: built with torchvision, the learner "
                         "refuses its runs by name (no special open and close token around them; none is named by "
                         "the processor, and no checkpoint template was found)",
    "InklingProcessor": "not probed here",
    "Kimi_K25Processor": f"{_GRID} as bare `<|media_pad|>` runs; its brackets come only from the checkpoint's template "
                         "(`<|media_begin|>image<|media_content|>…<|media_end|>` in its video expansion), not found: "
                         "with a guessed template the learner takes the inner pair `<|media_content|>…<|media_end|>`, "
                         "which would leave `<|media_begin|>image` outside the span (built with torchvision)",
    "Lfm2VlProcessor": "tiles and a thumbnail, each `<|img_row_r_col_c|> <image>×n` inside "
                       "`<|image_start|>…<|image_end|>` (one tile: `<image>×n` alone), with spatial_shapes and "
                       "pixel_attention_mask tensors; built with torchvision, the learner refuses `spatial_shapes` by "
                       "name. An image owns one pixel row per tile marker in its span (or one), and a tile's count is "
                       "ceil(h/ds)·ceil(w/ds) of its spatial_shapes row, so the tiles differ in count: no slicing rule "
                       "reads pixel rows per item from span markers yet (the processor drops image_rows / image_cols)",
    "MiniCPMOcrProcessor": "slices `<slice>…</slice>` with a global image, counts from grids",
    "MiniCPMV4_6Processor": "`<image>…</image>` then slices `<slice>…</slice>` (rows joined by newlines), counts from "
                            "target_sizes; its pixel_values pack every slice along the last axis, which no pixel "
                            "slicing rule cuts yet",
    "MiniCPMV4_7Processor": "slices `<slice>…</slice>` with a global image, counts from grids",
    "Molmo2Processor": "low- and high-resolution crops as rows `<im_patch>×w <im_col>` inside `<im_start>…<im_end>`",
    "MuseGlimmerProcessor": _TORCHVISION,
    "MuseSparkProcessor": _TORCHVISION,
    "NemotronH_Omni_Reasoning_V3Processor": "`<img> <image>×N </img>` from image_grid_hw; audio spans too; its image "
                                            "processor has only a torchvision backend, not built offline here",
    "PPChart2TableProcessor": "its processor passes text and images through without expanding an image token",
    "PerceptionLMProcessor": "runs of `<|image|>` (tiles × tokens per tile) without brackets; built with torchvision, its "
                             "image processor refuses a call whose images make different tile counts (pixel_values "
                             "(images, tiles, 3, H, W) cannot be stacked), so a row of mixed-size images cannot be "
                             "processed at all, and its _get_num_multimodal_tokens disagrees with its own expansion "
                             "(a 36x60 image at 16-pixel tiles: 16 vs 20 tokens)",
    "Step3p7Processor": "local patches `<patch_start>…<patch_end>` and a global `<im_start>…<im_end>` per image",
    "UnlimitedOcrProcessor": "one run of `<image>` (global and local queries with row ends) from patches_grid",
    "VideoLlama3Processor": f"{_GRID}, merge per image; no bracket token is named by the processor or "
                            "VideoLlama3Config and its checkpoint's template was not found; its processor also returns "
                            "image_merge_sizes (one per image), a tensor window slicing does not know yet",
}

# class -> the learned grammar and the tests that prove it (the class is in no adapter's `classes`)
LEARNED = {
    "Gemma3nProcessor": "learned `<start_of_image> <image_soft_token>×N <end_of_image>` (fixed count) and its audio "
                        "`<start_of_audio> <audio_soft_token>×8 <end_of_audio>`: proven on pre-tokenized rows with the "
                        "real processor (tests/test_family_learned.py, tests/test_audio.py)",
    "Glm4vProcessor": "learned `<|begin_of_image|> <|image|>×(t·h·w/merge²) <|end_of_image|>` (grid count): GLM-4.1V's "
                      "real processor with GLM-4.1V-9B-Thinking's real template in the shared contract "
                      "(tests/test_families.py) and a tiny Glm4vForConditionalGeneration (tests/test_family_models_d.py)",
    "Glm46VProcessor": "learned `<|begin_of_image|> <|image|>×(t·h·w/merge²) <|end_of_image|>` (grid count): the "
                       "real processor with GLM-4.1V-9B-Thinking's real template (GLM-4.6V's own not vendored), "
                       "windows of a conversation train exactly its answers, a tiny Glm46VForConditionalGeneration "
                       "trains and naive truncation fails (tests/test_family_learned_e.py)",
    "Glm5NextProcessor": "learned `<|begin_of_image|> <|image|>×(t·h·w/merge²) <|end_of_image|>` (grid count): the "
                         "real processor with GLM-4.1V-9B-Thinking's real template (GLM-5-Next's own not vendored), "
                         "windows of a conversation train exactly its answers, a tiny Glm5NextForConditionalGeneration "
                         "trains and naive truncation fails (tests/test_family_learned_e.py)",
    "Lfm3VlProcessor": "learned `<|vision_start|> <|image_pad|>×(t·h·w/merge²) <|vision_end|>` (grid count; "
                       "brackets the processor names itself, no template vendored): pre-tokenized rows and a tiny "
                       "Lfm3VlForConditionalGeneration (tests/test_family_learned_e.py; transformers 5.24)",
    "Cosmos3EdgeProcessor": "learned `<|vision_start|> <|image_pad|>×(t·h·w/merge²) <|vision_end|>` (grid count; "
                            "brackets the processor names itself, no template vendored; mm_token_type_ids from its "
                            "model input names): pre-tokenized rows and a tiny Cosmos3EdgeForConditionalGeneration "
                            "(tests/test_family_learned_e.py)",
    "CohereCompassProcessor": "learned `<|VISION_START|> <|IMAGE_PAD|>×(t·h·w/merge²) <|VISION_END|>` (grid count; "
                              "brackets the processor names itself, no template vendored): pre-tokenized rows and a "
                              "tiny CohereCompassForConditionalGeneration (tests/test_family_learned_e.py)",
    "MiniMaxM3VLProcessor": "learned `]<]start of image[>[ ]<]image[>[×(t·h·w/merge²) ]<]end of image[>[` (grid count; "
                            "the processor writes the brackets itself): the real processor with a labelled ChatML "
                            "stand-in template, spans equal its expansion, windows train exactly the answers, a tiny "
                            "MiniMaxM3SparseForConditionalGeneration trains and naive truncation fails "
                            "(tests/test_family_tv.py; its image processor needs torchvision)",
    "JanusProcessor": "learned `<begin_of_image> <image_placeholder>×num_image_tokens <end_of_image>` (fixed count): "
                      "pre-tokenized rows and a tiny JanusForConditionalGeneration (tests/test_family_learned.py), and "
                      "conversation rows rendered by deepseek-community/Janus-Pro-1B's real template whose windows train "
                      "exactly its answers (tests/test_family_more.py); the checkpoint's processor sets "
                      "use_default_system_prompt, with which conversation rows are refused by name (its __call__ puts "
                      "a system prompt before the rendered text)",
    "ChameleonProcessor": "learned `<racm3:break> <image>×image_seq_length <eoss>` (fixed count): the real processor's "
                          "pre-tokenized rows split into windows of whole spans and their own pixels "
                          "and a tiny ChameleonForConditionalGeneration trains on them while naive truncation fails "
                          "(tests/test_family_more.py); no real chat template vendored (its processor takes none)",
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
