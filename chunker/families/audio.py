"""Audio grammars: `open audio×k close`, one bracket per audio item (Gemma 4 `<|audio> <|audio|>×k <audio|>`, Gemma 3n
`<start_of_audio> <audio_soft_token>×k <end_of_audio>`), as `ImageSpanSpec` audio fields and a count rule
(`spec.extra["audio_count"]`, read by `chunker.media.audio_item_tokens`).

A written adapter (Gemma 4) states its rule; `learn_audio` reads it off what a processor makes of two audio items of
different lengths, for learned adapters (Gemma 3n). Anything the probe cannot tie down leaves the audio ids guarded
(a row holding them is refused by name, never cut).
"""

from __future__ import annotations

import numpy as np

NAMES = ("audio_token", "boa_token", "eoa_token")
PROBE_SAMPLES = (1600, 16000)  # 0.1 s and 1 s at 16 kHz: every count rule known gives them different counts but one


def audio_grammar(processor) -> dict | None:
    """The `ImageSpanSpec` audio fields of a processor with a feature extractor and named audio tokens (`audio_token`,
    `boa_token`, `eoa_token` of the processor or its tokenizer), or None.

    Example:
        >>> from chunker.testing import build_processor
        >>> sorted(audio_grammar(build_processor("gemma4")))
        ['audio_close_ids', 'audio_open_ids', 'audio_token_id']
    """
    tok = getattr(processor, "tokenizer", None)
    if tok is None or getattr(processor, "feature_extractor", None) is None:
        return None
    names = [getattr(processor, n, None) or getattr(tok, n, None) for n in NAMES]
    ids = [tok.convert_tokens_to_ids(t) if isinstance(t, str) and t else None for t in names]
    if any(i is None or i == tok.unk_token_id for i in ids):
        return None
    return {"audio_token_id": int(ids[0]), "audio_open_ids": (int(ids[1]),), "audio_close_ids": (int(ids[2]),)}


def learn_audio(processor) -> tuple[dict, dict] | None:
    """(spec audio fields, `audio_count` rule) read off the processor's expansion of two audio items, or None when it
    has no audio grammar or its expansion is not one plain bracket per item with counts a known rule explains.

    Example:
        >>> from chunker.testing import build_processor
        >>> learn_audio(build_processor("gemma3n"))[1]
        {'rule': 'fixed', 'tokens': 8}
    """
    from ..media import audio_item_tokens

    fields = audio_grammar(processor)
    if fields is None:
        return None
    token = getattr(processor, "audio_token", None) or processor.tokenizer.audio_token
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in PROBE_SAMPLES]
    try:
        out = processor(text=[f"a {token} b {token} c"], audio=waves, return_tensors="np")
    except Exception:  # noqa: BLE001  (whatever the processor raises, it refused the probe)
        return None
    ids = np.asarray(out["input_ids"])[0]
    opens = np.flatnonzero(ids == fields["audio_open_ids"][0])
    closes = np.flatnonzero(ids == fields["audio_close_ids"][0])
    audio = ids == fields["audio_token_id"]
    if len(opens) != 2 or len(closes) != 2 or not (opens < closes).all():
        return None
    inside = [audio[s + 1:e] for s, e in zip(opens, closes)]
    if not all(part.all() for part in inside) or int(audio.sum()) != sum(len(p) for p in inside):
        return None
    counts = [len(p) for p in inside]
    spec = type("Probe", (), {"extra": {}})()
    for rule in ({"rule": "halve", "times": 2}, {"rule": "fixed", "tokens": counts[0]}):
        spec.extra = {"audio_count": rule}
        found = audio_item_tokens(spec, out)
        if found is not None and found.tolist() == counts:
            return fields, rule
    return None
