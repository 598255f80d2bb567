"""The direct CLIP preprocessing gives the image processor's own pixel values (on every bundled photo and every
unusual mode, for the processor configs CLIP checkpoints use); every other processor, option or image goes through
the processor itself; and the fast precision's reduced decoding never shrinks an image below the resize target."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessor

from pairfilter_dagster.core.embedding.preprocess import DirectClipProcessing, ImagePreparation, pixel_values
from pairfilter_dagster.core.images import decode_rgb
from pairfilter_dagster.testing import photo_sources, write_clip_checkpoint, write_siglip_checkpoint, write_unusual_images

OPENAI_CLIP_B32_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}
"""preprocessor_config.json of openai/clip-vit-base-patch32 as published on the hub (the older feature-extractor
layout, plain ints for the sizes)."""


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    """The processors as from_pretrained loads them: the tiny test checkpoint's, the ViT-B/32 one the benchmark's
    checkpoint saves, and the published openai config."""
    folder = tmp_path_factory.mktemp("processors")
    CLIPImageProcessor().save_pretrained(folder / "vit-b-32")  # what write_clip_checkpoint(size="vit-b-32") saves
    (folder / "openai").mkdir()
    (folder / "openai" / "preprocessor_config.json").write_text(json.dumps(OPENAI_CLIP_B32_PREPROCESSOR))
    return {
        "tiny": AutoImageProcessor.from_pretrained(write_clip_checkpoint(folder / "tiny")),
        "vit-b-32": AutoImageProcessor.from_pretrained(folder / "vit-b-32"),
        "openai": AutoImageProcessor.from_pretrained(folder / "openai"),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Every bundled photo and every unusual mode, decoded as the pipeline decodes them."""
    unusual = write_unusual_images(tmp_path_factory.mktemp("unusual"))
    paths = [*photo_sources(), *unusual.values()]
    return {path.name: decode_rgb(str(path), path.read_bytes()) for path in paths}


@pytest.mark.parametrize("config", ["tiny", "vit-b-32", "openai"])
def test_the_direct_path_gives_the_processors_values_on_every_photo_and_mode(processors, images, config):
    processor = processors[config]
    direct = DirectClipProcessing.covering(processor)
    assert direct is not None
    assert len(images) == 22
    for name, image in images.items():
        assert direct.covers(image), name
        ours, theirs = direct(image), pixel_values(processor, image)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.float32, name
        assert np.abs(ours - theirs).max() <= 1e-6, name


def test_the_resize_floors_as_the_processor_does(processors):
    direct = DirectClipProcessing.covering(processors["vit-b-32"])
    assert direct.resized_size(640, 480) == (298, 224)
    assert direct.resized_size(480, 640) == (224, 298)
    assert direct.resized_size(224, 224) == (224, 224)


def test_the_direct_path_honours_the_configured_filter_and_crop(processors, images):
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 40}, resample=1,
                                   image_mean=0.5, image_std=0.25)
    direct = DirectClipProcessing.covering(processor)
    assert direct is not None
    for image in (images["cat.jpg"], images["img3.jpg"]):
        assert direct(image).shape == (3, 48, 40)
        assert np.abs(direct(image) - pixel_values(processor, image)).max() <= 1e-6


@pytest.mark.parametrize("options", [
    {"do_resize": False},
    {"size": {"height": 224, "width": 224}},
    {"size": {"shortest_edge": 224, "longest_edge": 300}},
    {"do_center_crop": False},
    {"crop_size": {"height": 256, "width": 256}},  # larger than the resize: the processor pads
    {"do_pad": True, "pad_size": {"height": 256, "width": 256}},
    {"do_rescale": False, "do_normalize": False},
])
def test_other_clip_options_fall_back_to_the_processor(images, options):
    processor = CLIPImageProcessor(**options)
    assert DirectClipProcessing.covering(processor) is None
    preparation = ImagePreparation(processor)
    image = images["cat.jpg"]
    assert np.array_equal(preparation.pixels(image), pixel_values(processor, image))


def test_siglips_processor_falls_back_to_the_processor(tiny_siglip_dir, images):
    processor = AutoImageProcessor.from_pretrained(tiny_siglip_dir)
    assert DirectClipProcessing.covering(processor) is None
    preparation = ImagePreparation(processor)
    for image in (images["cat.jpg"], images["img1.png"]):
        assert np.array_equal(preparation.pixels(image), pixel_values(processor, image))


def test_an_image_the_processor_composites_goes_through_the_processor(processors, tmp_path):
    """A palette PNG with a transparent colour decodes to RGB that still names that colour; the processor then
    paints it white, so the direct path leaves such an image (and any image not in RGB) to the processor."""
    path = tmp_path / "transparent.png"
    with Image.open(photo_sources()[0]) as photo:
        palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(path, transparency=0)
    image = decode_rgb(str(path), path.read_bytes())
    processor = processors["vit-b-32"]
    preparation = ImagePreparation(processor)
    assert image.mode == "RGB" and image.info.get("transparency") is not None
    assert not preparation.direct.covers(image)
    assert np.array_equal(preparation.pixels(image), pixel_values(processor, image))
    opaque = image.copy()
    opaque.info.pop("transparency")
    assert not np.array_equal(preparation.pixels(opaque), pixel_values(processor, image))  # the white made a difference
    gray = image.convert("L")
    assert not preparation.direct.covers(gray)
    assert np.array_equal(preparation.pixels(gray), pixel_values(processor, gray))


@pytest.mark.parametrize("config", ["tiny", "vit-b-32"])
def test_fast_decoding_reduces_large_images_but_never_below_the_resize_target(processors, tmp_path, config):
    processor = processors[config]
    fast, exact = ImagePreparation(processor, "fast"), ImagePreparation(processor, "exact")
    edge = processor.size["shortest_edge"]
    assert (fast.reduce_to, exact.reduce_to) == (edge, None)
    paths = [*photo_sources(), *write_unusual_images(tmp_path / "unusual").values()]
    reduced = 0
    for path in paths:
        data = path.read_bytes()
        full, small = exact.decode(str(path), data), fast.decode(str(path), data)
        assert full.size == decode_rgb(str(path), data).size  # exact never reduces
        assert small.mode == "RGB" and min(small.size) >= min(edge, min(full.size)), path.name
        assert (small.width >= small.height) == (full.width >= full.height), path.name  # still upright
        if min(full.size) >= 2 * edge:
            assert min(small.size) < 2 * edge, path.name  # halved at least once, to under twice the target
            reduced += 1
        assert fast.pixels(small).shape == exact.pixels(full).shape
    assert reduced >= (10 if config == "vit-b-32" else len(paths))


def test_a_fixed_size_processor_reduces_to_its_larger_side(tmp_path):
    processor = AutoImageProcessor.from_pretrained(write_siglip_checkpoint(tmp_path / "siglip", image_size=48))
    assert ImagePreparation(processor, "fast").reduce_to == 48
    assert ImagePreparation(CLIPImageProcessor(do_resize=False), "fast").reduce_to is None
