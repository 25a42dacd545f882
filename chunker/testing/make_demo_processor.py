"""Build the bundled demo processor (a tiny offline Qwen2-VL processor) into `chunker/data/demo-processor/`.

Run `python -m chunker.testing.make_demo_processor` after changing `families_b.build_processor`; the folder
is package data, loaded by `chunker.sources.load_processor("demo")` and used by `chunker demo`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

DEMO_FAMILY = "qwen2_vl"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "demo-processor"


def make_demo_processor(out_dir=DEFAULT_DIR):
    """Build the demo processor with the project's own offline builder and `save_pretrained` it to `out_dir`.

    Args:
        out_dir: the folder to (re)write; an existing folder is replaced.

    Returns:
        Path of the written folder.

    Example:
        >>> import tempfile, os
        >>> path = make_demo_processor(os.path.join(tempfile.mkdtemp(), "p"))
        >>> sorted(p.name for p in path.iterdir())[:2]
        ['chat_template.jinja', 'processor_config.json']
    """
    from .families_b import build_processor

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    processor = build_processor(DEMO_FAMILY)
    processor.save_pretrained(str(out))
    _name_real_class(out, processor)
    return out


def _name_real_class(out: Path, processor) -> None:
    """Record the real processor class, and a video processor config, so plain `AutoProcessor` loads the folder.

    The builder's class is an image-only subclass (no torchvision here); saved under its own name the folder
    would only load through chunker. With the real name and a video processor entry, `AutoProcessor` builds
    the full real processor wherever torchvision is installed, and `load_processor` falls back to the
    image-only subclass where it is not.
    """
    real = type(processor).__mro__[1].__name__
    ip = processor.image_processor
    video = {
        "video_processor_type": real.replace("Processor", "VideoProcessor"),
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
        "size": dict(ip.size),
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
    }
    for name, extra in (("processor_config.json", {"video_processor": video}), ("tokenizer_config.json", {})):
        path = out / name
        config = json.loads(path.read_text())
        config.update(extra, processor_class=real)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv=None) -> None:
    """Command line: `python -m chunker.testing.make_demo_processor [--out DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    print(make_demo_processor(args.out))


if __name__ == "__main__":
    main()
