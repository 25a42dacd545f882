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
        (processor_cls,),
        {"get_attributes": classmethod(get_attributes), "__module__": __name__},
    )
    return sub
