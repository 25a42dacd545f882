"""Processors refused by name, with the reason no window can be right for them (read from transformers' source).

A class here is never learned (`chunker.families.learned`): its grammar may look plain to the probe while the model
needs something windows cannot give. Every other processor without a written family is learned or refused by the
learner, with what the probe saw.
"""

from __future__ import annotations

_REWRITES = "its processor rewrites the text itself"
_CROSS = "its model attends to images by cross-attention"

REFUSED = {
    "IdeficsProcessor": (
        f"{_CROSS} (Idefics 1): an image_attention_mask (batch, tokens, images) ties each token to earlier images, "
        "which windows do not slice"
    ),
    "FuyuProcessor": (
        f"{_REWRITES}: it puts every image's patch rows (`|SPEAKER|`×width + `|NEWLINE|`) and a BOS before the "
        "prompt and returns image_patches_indices, so the text no longer holds the conversation the template rendered"
    ),
    "Blip2Processor": f"{_REWRITES}: it puts the image's query tokens before the whole text (one image per text)",
    "BlipProcessor": "its images are not in input_ids: the model attends to them by cross-attention in its text decoder",
    "InstructBlipProcessor": (
        f"{_REWRITES}: it puts the image's query tokens before the text and returns qformer_input_ids, a second "
        "tokenization of the whole text no window can cut in step"
    ),
    "InstructBlipVideoProcessor": (
        f"{_REWRITES}: it puts the video's query tokens before the text and returns qformer_input_ids, a second "
        "tokenization of the whole text no window can cut in step"
    ),
    "GitProcessor": "its images are not in input_ids: the model puts the image embeddings before the text itself",
    "Pix2StructProcessor": f"{_REWRITES}: it renders the text into the image as a header (no text tokens for images)",
    "UdopProcessor": "it is a document model: words come with bounding boxes from OCR, not from a chat template",
    "Florence2Processor": (
        f"{_REWRITES}: it turns task tokens (`<OD>`, `<CAPTION>`...) into prompts and feeds an encoder-decoder; "
        "there is no conversation to window"
    ),
    "GotOcr2Processor": f"{_REWRITES}: it builds its own OCR prompt around `<img>` (format and box options)",
    "ShieldGemma2Processor": f"{_REWRITES}: it builds a policy-classification prompt around each image",
    "EvollaProcessor": "its inputs are protein sequences and structures, not images in a chat",
    "PI0Processor": "it is a robot policy: its model takes state and action tensors no window can carry",
    "PPFormulaNetProcessor": "it takes images only (an image-to-formula encoder-decoder): there is no text to window",
}


def refusal(processor) -> str | None:
    """Why `processor`'s class is refused (its own class or the nearest refused one in its MRO), or None."""
    for cls in type(processor).__mro__:
        why = REFUSED.get(cls.__name__)
        if why:
            return why
    return None
