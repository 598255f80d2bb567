"""From image bytes to pixel values, as every engine does it.

The checkpoint's own image processor defines the pixel values. For the configurations CLIP checkpoints use,
`DirectClipProcessing` takes the same steps with the same arithmetic and skips the processor's full-size copies of
the image (about a third of its cost on photos); any other processor, option or image goes through the processor
itself. With precision fast, images are also decoded at reduced size (`reduction_edge`).

transformers is imported only where a processor is inspected, never at module level (the Dagster definitions import
this module through `model`)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..images import decode_rgb

PIL_FILTERS = {int(f) for f in Image.Resampling}
UNUSED_BY_PIL_BACKEND = {"device", "return_tensors", "disable_grouping", "image_seq_length", "default_to_square",
                         "do_convert_rgb"}
"""Processor options that cannot change the pixel values of an RGB PIL image under the PIL backend: the device and
tensor type of the output, batching, and (for a `shortest_edge` size) `default_to_square`, which its resize ignores.
`do_convert_rgb` only matters for images this path never takes (`DirectClipProcessing.covers`)."""
HANDLED = {"do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
           "do_normalize", "image_mean", "image_std", "do_pad", "pad_size", "data_format", "input_data_format"}


def pixel_values(image_processor: Any, image: Image.Image) -> np.ndarray:
    """One image's pixel values (C, H, W) as the image processor makes them."""
    return image_processor(images=[image], return_tensors="np")["pixel_values"][0]


def size_field(size: Any, name: str) -> Any:
    """A field of a processor's size (a transformers SizeDict, or a plain dict in older releases)."""
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def only_fields(size: Any, names: Sequence[str]) -> bool:
    """Whether `size` sets exactly the fields `names`, each to an int, and nothing else."""
    values = dict(size) if size is not None else {}
    given = {k for k, v in values.items() if v is not None}
    return given == set(names) and all(isinstance(values[k], int) and values[k] > 0 for k in names)


class DirectClipProcessing:
    """`CLIPImageProcessor`'s PIL backend, step for step, for an RGB image: the shortest edge resized with the
    configured filter to the size the processor computes (it floors: 640x480 becomes 298x224), center crop, then
    rescale and normalise through a per-channel table of the 256 values each byte can take, computed with the
    processor's own operations (float64 rescale, float32 normalise), so each output value is the processor's."""

    def __init__(self, shortest_edge: int, resample: int, crop: tuple[int, int], table: np.ndarray) -> None:
        self.shortest_edge = shortest_edge
        self.resample = resample
        self.crop_height, self.crop_width = crop
        self.table = table  # (3, 256) float32

    @classmethod
    def covering(cls, processor: Any) -> "DirectClipProcessing | None":
        """The direct path for this processor, or None where it does not take exactly these steps (another class,
        such as SigLIP's or the torchvision backend; no resize, a size given as height/width, padding, an unknown
        option)."""
        try:
            from transformers import CLIPImageProcessorPil
        except ImportError:
            return None
        if type(processor) is not CLIPImageProcessorPil:
            return None
        options = {name: getattr(processor, name, None) for name in type(processor).valid_kwargs.__annotations__}
        if any(value is not None for name, value in options.items() if name not in HANDLED | UNUSED_BY_PIL_BACKEND):
            return None
        size, crop_size = options["size"], options["crop_size"]
        resample = 2 if options["resample"] is None else options["resample"]  # the PIL backend's own default
        if not (options["do_resize"] and options["do_center_crop"] and only_fields(size, ["shortest_edge"])
                and only_fields(crop_size, ["height", "width"]) and isinstance(resample, int)
                and int(resample) in PIL_FILTERS and not options["do_pad"] and options["input_data_format"] is None
                and options["data_format"] in (None, "channels_first")):
            return None
        shortest_edge = size_field(size, "shortest_edge")
        crop = (size_field(crop_size, "height"), size_field(crop_size, "width"))
        if max(crop) > shortest_edge:  # the processor would pad the crop; not a CLIP configuration
            return None
        table = value_table(options)
        return None if table is None else cls(shortest_edge, int(resample), crop, table)

    def covers(self, image: Image.Image) -> bool:
        """RGB without a transparent colour: the processor composites a transparent colour onto white first."""
        return image.mode == "RGB" and image.info.get("transparency") is None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the processor's shortest-edge resize (transformers' get_resize_output_image_size)."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)

    def __call__(self, image: Image.Image) -> np.ndarray:
        width, height = self.resized_size(*image.size)
        resized = np.asarray(image.resize((width, height), resample=self.resample))
        top, left = (height - self.crop_height) // 2, (width - self.crop_width) // 2
        cropped = resized[top : top + self.crop_height, left : left + self.crop_width]
        pixels = np.empty((3, self.crop_height, self.crop_width), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], cropped[..., channel], out=pixels[channel])
        return pixels


def value_table(options: dict[str, Any]) -> np.ndarray | None:
    """What rescale and normalise make of each byte value, per channel, with the PIL backend's arithmetic
    (transformers.image_transforms.rescale / normalize); None when neither is on (the output would stay uint8)."""
    if not (options["do_rescale"] or options["do_normalize"]):
        return None
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
    if options["do_rescale"]:
        values = (values.astype(np.float64) * options["rescale_factor"]).astype(np.float32)
    if options["do_normalize"]:
        values = values.astype(np.float32) if not np.issubdtype(values.dtype, np.floating) else values
        mean, std = (per_channel(options[name], values.dtype) for name in ("image_mean", "image_std"))
        if mean is None or std is None:
            return None
        values = (values - mean[:, None]) / std[:, None]
    return np.ascontiguousarray(values, dtype=np.float32)


def per_channel(value: Any, dtype: np.dtype) -> np.ndarray | None:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value) if value is not None else []
    return np.array(values, dtype=dtype) if len(values) == 3 else None


def reduction_edge(processor: Any) -> int | None:
    """How far both sides of a decoded image may shrink, for precision fast, without going below what the processor
    resizes to: its shortest edge, or the larger of a fixed height and width; None when it does not resize."""
    size = getattr(processor, "size", None)
    if not getattr(processor, "do_resize", False) or size is None:
        return None
    if size_field(size, "shortest_edge"):
        return int(size_field(size, "shortest_edge"))
    if size_field(size, "height") and size_field(size, "width"):
        return int(max(size_field(size, "height"), size_field(size, "width")))
    return None


def reduced(image: Image.Image, edge: int) -> Image.Image:
    """The image shrunk by the largest whole factor that keeps both sides at least `edge` (`Image.reduce`, a box
    filter): for formats that cannot decode at reduced size, and JPEGs still twice as large after draft decoding."""
    factor = min(image.size) // edge
    return image.reduce(factor) if factor >= 2 else image


class ImagePreparation:
    """Decoding and preprocessing for one image processor and precision; thread-safe, one per engine worker."""

    def __init__(self, image_processor: Any, precision: str = "exact") -> None:
        self.image_processor = image_processor
        self.direct = DirectClipProcessing.covering(image_processor)
        self.reduce_to = reduction_edge(image_processor) if precision == "fast" else None

    def decode(self, path: str, data: bytes) -> Image.Image:
        """The verified bytes `data` of the file at `path`, decoded as Data-Juicer does (`decode_rgb`); with
        precision fast, a JPEG decodes at 1/2, 1/4 or 1/8 scale (`Image.draft`) and a larger image is then reduced,
        both sides staying at least the processor's resize target."""
        image = decode_rgb(path, data, draft_edge=self.reduce_to)
        return image if self.reduce_to is None else reduced(image, self.reduce_to)

    def pixels(self, image: Image.Image) -> np.ndarray:
        if self.direct is not None and self.direct.covers(image):
            return self.direct(image)
        return pixel_values(self.image_processor, image)
