"""The status vocabulary of the stats table: every ingested sample gets exactly one of these.

A sample's checks run in the order of this enum, and it gets the status of the first problem found."""

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    MALFORMED_LINE = "malformed_line"
    INVALID_IMAGES = "invalid_images"
    NOT_A_PAIR = "not_a_pair"
    URL_NOT_ALLOWED = "url_not_allowed"
    PATH_NOT_ALLOWED = "path_not_allowed"
    MISSING_IMAGE = "missing_image"
    IMAGE_TOO_LARGE = "image_too_large"
    UNREADABLE_IMAGE = "unreadable_image"

    def __str__(self) -> str:
        return self.value


STATUS_DESCRIPTIONS = {
    Status.OK: "scored: every image was read and embedded, one score per image pair",
    Status.MALFORMED_LINE: "the manifest line is empty, not UTF-8, not valid JSON, or not a JSON object",
    Status.INVALID_IMAGES: "the sample has no `images` field, or it is not a list of non-empty path strings",
    Status.NOT_A_PAIR: "the images do not form pairs under the `pairing` rule (default: exactly two), "
    "or one path appears twice",
    Status.URL_NOT_ALLOWED: "an image is a URL (http://, s3://, data:, ...); the pipeline never fetches images",
    Status.PATH_NOT_ALLOWED: "an image path lies outside the allowed image roots (default: the data folder)",
    Status.MISSING_IMAGE: "an image file does not exist",
    Status.IMAGE_TOO_LARGE: "an image has more pixels than `max_image_pixels` (decompression-bomb guard)",
    Status.UNREADABLE_IMAGE: "an image file exists but cannot be read or decoded as an image (empty, truncated, "
    "not an image, a folder, ...)",
}
