"""A tiny real byte-level BPE tokenizer, trained in-process, for building processors offline."""

from __future__ import annotations

from functools import cache

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. describe this picture in detail. "
    "what is shown in the image? a cat sits on a mat next to a red ball. "
    "user model assistant system you are a helpful assistant. answer briefly. "
    "compare the two images and say which one is brighter. 0123456789 seconds "
    "here is the original image and here are some crops to help you see better "
)


@cache
def _trained(special_tokens: tuple[str, ...], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    return tok.to_str()


def make_tokenizer(special_tokens, *, named=None, vocab_size=600, **kwargs):
    """A `PreTrainedTokenizerFast` whose `special_tokens` are single, never-split ids.

    Args:
        special_tokens: every special token of the family, in a fixed order (ids follow it).
        named: attribute name -> token, e.g. {"image_token": "<image>"}; gives `tokenizer.image_token_id`.
        vocab_size: BPE vocabulary size, special tokens included.
        **kwargs: passed to `PreTrainedTokenizerFast` (bos_token, eos_token, pad_token, chat_template...).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = tuple(dict.fromkeys(special_tokens))
    tok = Tokenizer.from_str(_trained(specials, vocab_size))
    extra = dict(named or {})
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra, **kwargs)
