"""The status vocabulary of the stats table: every ingested sample gets exactly one of these."""

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    MALFORMED_LINE = "malformed_line"
    INVALID_IMAGES = "invalid_images"
    NOT_A_PAIR = "not_a_pair"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"

    def __str__(self) -> str:
        return self.value


STATUS_DESCRIPTIONS = {
    Status.OK: "scored: both images were read and embedded",
    Status.MALFORMED_LINE: "the manifest line is empty, not UTF-8, not valid JSON, or not a JSON object",
    Status.INVALID_IMAGES: "the sample has no `images` field, or it is not a list of strings",
    Status.NOT_A_PAIR: "the sample does not hold exactly two images with different paths (Data-Juicer's rule)",
    Status.MISSING_IMAGE: "an image file does not exist",
    Status.UNREADABLE_IMAGE: "an image file exists but cannot be decoded as an image",
}
