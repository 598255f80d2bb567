"""Which image pairs a sample is scored on.

Data-Juicer's rule (`exactly_two`) takes samples of exactly two images. For samples of N >= 2 images,
`consecutive` scores (1,2), (2,3), ..., (N-1,N) and `all_pairs` scores every (i, j) with i < j. Pairs are
0-based index pairs, in the order their scores are stored and written to `__dj__stats__`."""

from itertools import combinations
from typing import Literal

PAIRINGS = ("exactly_two", "consecutive", "all_pairs")
Pairing = Literal["exactly_two", "consecutive", "all_pairs"]
DEFAULT_PAIRING: Pairing = "exactly_two"

ImagePair = tuple[int, int]


def check_pairing(pairing: str) -> str:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing: must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    return pairing


def pairing_problem(image_count: int, pairing: str) -> str | None:
    """Why a sample with `image_count` images cannot be scored under `pairing`, or None when it can."""
    if check_pairing(pairing) == "exactly_two":
        if image_count != 2:
            return f"a sample must hold exactly two images (pairing exactly_two), found {image_count}"
    elif image_count < 2:
        return f"a sample must hold at least two images (pairing {pairing}), found {image_count}"
    return None


def pair_count(image_count: int, pairing: str) -> int:
    """How many pairs `image_pairs` would build, without building them."""
    if pairing_problem(image_count, pairing):
        return 0
    return image_count * (image_count - 1) // 2 if pairing == "all_pairs" else image_count - 1


def image_pairs(image_count: int, pairing: str) -> list[ImagePair]:
    """The index pairs scored for a sample of `image_count` images, in score order (empty when none fit)."""
    if pairing_problem(image_count, pairing):
        return []
    if pairing == "all_pairs":
        return list(combinations(range(image_count), 2))
    return [(i, i + 1) for i in range(image_count - 1)]
