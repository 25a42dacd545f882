"""Import a processor module whose top level reaches for its torchvision image processor, without torchvision.

Some processor modules of transformers 5.17 (Gemma 4) import a helper from the torchvision image-processor module
(`image_processing_<model>`) at their top level, though the same names live, identical, in the PIL one
(`image_processing_pil_<model>`). Importing the processor module with the PIL module standing in for the torchvision
one, for the duration of the import only, gives the real processor class with the PIL helpers.
"""

from __future__ import annotations

import importlib
import sys


def processor_class(model: str, class_name: str) -> type:
    """The real `transformers.models.<model>.processing_<model>.<class_name>`, importable without torchvision.

    Args:
        model: the model directory, e.g. "gemma4".
        class_name: the processor class, e.g. "Gemma4Processor".

    Returns:
        The class itself (not a subclass).

    Example:
        >>> processor_class("gemma4", "Gemma4Processor").__name__
        'Gemma4Processor'
    """
    base = f"transformers.models.{model}"
    name = f"{base}.processing_{model}"
    try:
        return getattr(importlib.import_module(name), class_name)
    except ImportError:
        pass
    sys.modules.pop(name, None)
    torch_name = f"{base}.image_processing_{model}"
    pil = importlib.import_module(f"{base}.image_processing_pil_{model}")
    saved = sys.modules.get(torch_name)
    sys.modules[torch_name] = pil
    try:
        module = importlib.import_module(name)
    finally:
        if saved is None:
            sys.modules.pop(torch_name, None)
        else:
            sys.modules[torch_name] = saved
    return getattr(module, class_name)
