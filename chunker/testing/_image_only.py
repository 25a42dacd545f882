"""Image-only subclasses of processors that otherwise require a video processor (and so torchvision).

The subclass keeps every behaviour of the real class; only `get_attributes()` leaves out `video_processor`,
so `ProcessorMixin.__init__` neither demands nor type-checks one. The class name keeps the real name as a
prefix and the real class stays in the MRO, so family detection by class name still works.
"""

from __future__ import annotations

from functools import cache


@cache
def image_only(processor_cls: type) -> type:
    """A subclass of `processor_cls` that is built without a video processor.

    Args:
        processor_cls: a transformers processor class whose `__init__` takes `video_processor`.

    Returns:
        The subclass `<Name>ImageOnly`; calling it with videos is unsupported (no `video_processor`).

    Example:
        >>> from transformers import Qwen2VLProcessor
        >>> image_only(Qwen2VLProcessor).get_attributes()
        ['image_processor', 'tokenizer']
    """

    def get_attributes(cls):
        return [name for name in super(sub, cls).get_attributes() if name != "video_processor"]

    sub = type(
        f"{processor_cls.__name__}ImageOnly",
        (processor_cls, _without_video()),
        {"get_attributes": classmethod(get_attributes), "__module__": __name__},
    )
    return sub


@cache
def _without_video() -> type:
    """A `ProcessorMixin` step placed after the real class in the MRO: it drops the `video_processor=None` that some
    classes hand on to `ProcessorMixin.__init__` by name (Gemma 4) or by position (LLaVA-NeXT-Video)."""
    from transformers.processing_utils import ProcessorMixin

    def __init__(self, *args, **kwargs):
        if kwargs.get("video_processor", 0) is None:
            del kwargs["video_processor"]
        real = type(self).__mro__[1].get_attributes()  # the real class's attributes, in its signature's order
        at = real.index("video_processor") if "video_processor" in real else len(args)
        if at < len(args) and args[at] is None:
            args = args[:at] + args[at + 1:]
        ProcessorMixin.__init__(self, *args, **kwargs)

    return type("WithoutVideoProcessor", (ProcessorMixin,), {"__init__": __init__, "__module__": __name__})
