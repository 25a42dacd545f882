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


def llama_tokenizer(extra, *, bos_token="<s>", eos_token="</s>", **kwargs):
    """A LLaMA-style tokenizer: `<unk>`, BOS, EOS, `<pad>`, then `extra`; BOS added before a text."""
    return make_tokenizer(("<unk>", bos_token, eos_token, "<pad>", *extra), bos_token=bos_token, eos_token=eos_token,
                          pad_token="<pad>", unk_token="<unk>", add_bos_token=True, **kwargs)


def gemma_tokenizer(extra, **kwargs):
    """A Gemma-style tokenizer: `<pad> <eos> <bos> <unk>`, then `extra`."""
    return make_tokenizer(("<pad>", "<eos>", "<bos>", "<unk>", *extra), bos_token="<bos>", eos_token="<eos>",
                          pad_token="<pad>", unk_token="<unk>", **kwargs)


def chatml_tokenizer(extra, **kwargs):
    """A ChatML (Qwen-style) tokenizer: `<|endoftext|> <|im_start|> <|im_end|>`, then `extra`; no BOS."""
    return make_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra), eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", **kwargs)


# zai-org/GLM-4.1V-9B-Thinking (and the GLM-V checkpoints after it): the special tokens the template and the processor
# use (its added tokens); the processor finds its image and video tokens by these names (the tokenizer names none).
GLM_SPECIALS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                "<|end_of_video|>", "<|image|>", "<|video|>", "<think>", "</think>")


def glm_tokenizer():
    """The GLM-V tokenizer (`GLM_SPECIALS`), padded with its end of text."""
    return make_tokenizer(GLM_SPECIALS, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
