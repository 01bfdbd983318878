"""Mask-ratio buckets for reporting inpainting results by how much of the image is missing.

Inpainting papers report their metrics per hole-to-image area ratio in steps of 10%: the
irregular-mask test set of Partial Convolutions (Liu et al. 2018, "Image Inpainting for
Irregular Holes Using Partial Convolutions") is split into six such categories up to 60%,
and later work on those masks (e.g. RFR-Net, Li et al. 2020) reports in the same steps.
Here each bucket is half-open, [low, high), so a ratio of exactly 0.1 falls in
"10-20%", and everything from 60% up shares one last bucket, "60%+".
"""

from __future__ import annotations

from bisect import bisect_right

MASK_BUCKETS: tuple[str, ...] = (
    "0-10%",
    "10-20%",
    "20-30%",
    "30-40%",
    "40-50%",
    "50-60%",
    "60%+",
)
# Lower edges of every bucket but the first. k / 10 is the float that the literal 0.k
# denotes, so a ratio written 0.3 lands in "30-40%" (0.1 * 3 would not).
_EDGES = tuple(k / 10 for k in range(1, len(MASK_BUCKETS)))


def mask_bucket(ratio: float) -> str:
    """The bucket name of a hole ratio in [0, 1], e.g. 0.15 -> "10-20%"."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask_bucket: ratio must be in [0, 1], got {ratio}")
    return MASK_BUCKETS[bisect_right(_EDGES, ratio)]
