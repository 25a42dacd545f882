"""A chat template that prints a message's content as is (GLM-4.1V's, for assistant and system turns) must not
train the Python text of a content list: such lists are given to it again as one string, and a list holding
media is refused by name. Real processor class and real vendored template (tests/data/chat_templates)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import chunker
from chunker.errors import TemplateError

pytest.importorskip("transformers.models.glm4v.processing_glm4v")


@pytest.fixture(scope="module")
def processor():
    from chunker.testing import build_processor

    return build_processor("glm4v")


def conversation(answer):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]},
            {"role": "assistant", "content": answer}]


def trained_text(processor, windows) -> str:
    labels = np.concatenate([np.asarray(w["labels"]) for w in windows])
    return processor.tokenizer.decode(labels[labels != -100])


def test_a_text_list_in_a_turn_the_template_prints_trains_its_text_not_its_python_repr(processor):
    image = Image.new("RGB", (64, 48), "red")
    sp = chunker.WindowSplitter(processor, max_length=4096)
    listed = sp.split_example({"messages": conversation([{"type": "text", "text": "It is red."}]),
                               "images": [image]}, index=0)
    # the reference: typed by hand; the twin: the same answer given as a string, which the template prints
    assert trained_text(processor, listed) == "It is red."
    plain = sp.split_example({"messages": conversation("It is red."), "images": [image]}, index=0)
    assert [list(w["input_ids"]) for w in listed] == [list(w["input_ids"]) for w in plain]
    assert "{'type'" not in processor.tokenizer.decode(listed[0]["input_ids"])


def test_media_in_a_turn_the_template_prints_as_text_is_refused_by_name(processor):
    image = Image.new("RGB", (64, 48), "red")
    answer = [{"type": "image"}, {"type": "text", "text": "It is red."}]
    sp = chunker.WindowSplitter(processor, max_length=4096)
    with pytest.raises(TemplateError, match="prints the content of the assistant message as Python text"):
        sp.split_example({"messages": conversation(answer), "images": [image, image]}, index=3)
