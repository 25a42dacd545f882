"""The grammar record of a model family: which token ids make a media span, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

KINDS = ("bracket", "run", "terminated_run", "tiles")


@dataclass(frozen=True)
class ImageSpanSpec:
    """How media items appear in `input_ids` for one model family.

    Every field is data; `chunker.spans` reads it, nothing branches on `family`.

    Args:
        family: a name such as "gemma3", "qwen2_vl" (informative; "custom" for a hand-made spec).
        kind: how a span is delimited:
            "bracket": an open id ... a close id, nesting allowed (Gemma 3, Qwen, InternVL);
            "run": a run of placeholder ids with no brackets (LLaVA); split every `tokens_per_image`
                when that is fixed;
            "terminated_run": a run of `body_ids` closed by `end_id` (Pixtral `[IMG]`/`[IMG_BREAK]`/`[IMG_END]`);
            "tiles": Idefics3/SmolVLM tile groups, one item ending after its `global_id` block.
        image_token_id: the placeholder id the vision features replace.
        video_token_id: the video placeholder id, if the family has videos.
        open_ids, close_ids: bracket ids ("bracket"); `open_ids[0]`/`close_ids[0]` for "tiles" is the
            `<fake_token_around_image>` id.
        body_ids: ids allowed inside a "terminated_run" span besides `end_id`.
        end_id: the id that closes a "terminated_run" span.
        tile_ids: "tiles": ids that may follow an opening fake token (row/col ids and `global_id`).
        global_id: "tiles": the global-image id that starts the last block of an item.
        tokens_per_image: placeholder tokens per image when fixed (Gemma 3: 256), else None.
        tokens_per_tile: "tiles"/"bracket" families whose items are whole tiles/patches of this many tokens.
        type_ids_column: the row column marking media positions ("token_type_ids", "mm_token_type_ids").
        bos_id: the id a window prefix starts with, if the family uses one.
        instruction_ids, response_ids: token ids opening a user and an assistant turn; the loss mask
            (train_on="assistant") covers what follows a response marker up to the next instruction marker.
        prefix_media: media live only in a leading prefix (PaliGemma): every window repeats it.
        group_crops: one item is an image block followed by its pan-and-scan crop blocks (Gemma 3).
        audio_token_id: the audio placeholder id, if the family has audio (Gemma 4 `<|audio|>`); its spans are
            `audio_open_ids ... audio_close_ids` brackets, one per audio item, found beside the image grammar, or,
            without brackets, bare runs of it (Phi-4-multimodal; back-to-back items share a run).
        audio_open_ids, audio_close_ids: the audio bracket ids (Gemma 4 `<|audio>`, `<audio|>`), or both empty.
        extra: family data for the transformers edge (pixel slicing rule, processor attributes).

    Example:
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> spec.media_ids
        (7,)
    """

    family: str
    kind: str
    image_token_id: int
    video_token_id: int | None = None
    open_ids: tuple[int, ...] = ()
    close_ids: tuple[int, ...] = ()
    body_ids: tuple[int, ...] = ()
    end_id: int | None = None
    tile_ids: tuple[int, ...] = ()
    global_id: int | None = None
    tokens_per_image: int | None = None
    tokens_per_tile: int | None = None
    type_ids_column: str | None = None
    bos_id: int | None = None
    instruction_ids: tuple[int, ...] = ()
    response_ids: tuple[int, ...] = ()
    prefix_media: bool = False
    group_crops: bool = False
    audio_token_id: int | None = None
    audio_open_ids: tuple[int, ...] = ()
    audio_close_ids: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        from .errors import ConfigError

        if self.kind not in KINDS:
            raise ConfigError(f"ImageSpanSpec.kind={self.kind!r} is not one of {KINDS}")
        if self.kind == "bracket" and not (self.open_ids and self.close_ids):
            raise ConfigError("a 'bracket' spec needs open_ids and close_ids (e.g. <start_of_image>, <end_of_image>)")
        if self.kind == "bracket" and set(self.open_ids) & set(self.close_ids):
            raise ConfigError("a 'bracket' spec needs different open and close ids (one token cannot do both)")
        if self.kind == "terminated_run" and self.end_id is None:
            raise ConfigError("a 'terminated_run' spec needs end_id (e.g. the [IMG_END] id)")
        if self.kind == "tiles" and (not self.open_ids or self.global_id is None):
            raise ConfigError("a 'tiles' spec needs open_ids=(<fake_token_around_image> id,) and global_id")
        if self.audio_token_id is not None and bool(self.audio_open_ids) != bool(self.audio_close_ids):
            raise ConfigError("a spec with audio brackets needs both audio_open_ids and audio_close_ids (e.g. <|audio>, "
                              "<audio|>), or neither: audio spans are then bare runs of audio_token_id (Phi-4-mm)")
        for name in ("instruction_ids", "response_ids", "open_ids", "close_ids", "body_ids", "tile_ids",
                     "audio_open_ids", "audio_close_ids"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))

    @property
    def media_ids(self) -> tuple[int, ...]:
        """Placeholder ids (image, then video) whose positions are media features."""
        return tuple(i for i in (self.image_token_id, self.video_token_id) if i is not None)

    @property
    def audio_ids(self) -> tuple[int, ...]:
        """The audio grammar's ids (placeholder, open and close brackets); empty for a family without audio."""
        if self.audio_token_id is None:
            return ()
        return (self.audio_token_id, *self.audio_open_ids, *self.audio_close_ids)

    @property
    def structural_ids(self) -> tuple[int, ...]:
        """Every id that may only appear inside a span (placeholders, brackets, tile and row ids)."""
        ids = (*self.media_ids, *self.open_ids, *self.close_ids, *self.body_ids, *self.tile_ids, *self.audio_ids)
        if self.end_id is not None:
            ids += (self.end_id,)
        if self.global_id is not None:
            ids += (self.global_id,)
        return tuple(dict.fromkeys(ids))

    def with_turns(self, instruction_ids=None, response_ids=None) -> ImageSpanSpec:
        """A copy with other turn markers (like Unsloth's `instruction_part` / `response_part`)."""
        return replace(
            self,
            instruction_ids=self.instruction_ids if instruction_ids is None else tuple(instruction_ids),
            response_ids=self.response_ids if response_ids is None else tuple(response_ids),
        )

    @classmethod
    def from_processor(cls, processor, **overrides) -> ImageSpanSpec:
        """Detect the family of a transformers processor and build its grammar record.

        Args:
            processor: a transformers processor (or a tokenizer for text-only use is refused).
            **overrides: fields to replace, e.g. `instruction_part="User:"`, `response_part="Bot:"`
                (strings are tokenized) or any field of this class.

        Returns:
            ImageSpanSpec of the detected family.

        Raises:
            UnsupportedProcessorError: no family matches; it names the class and how to pass a spec.
        """
        from .families import spec_from_processor

        return spec_from_processor(processor, **overrides)
