"""What a learned metric (LPIPS, FID, identity similarity) does without its weights file.

These metrics are only meaningful with their published weights, which are a user's download
named in the evaluate stage's config. With no file named, the metric is *unavailable*:
`read_weights` raises `MetricUnavailable`, which the evaluate stage catches to report the metric
as missing, never as a number from a randomly initialised network. A file that is named but
absent, unreadable or of the wrong layout is a mistake in the config, not a missing metric:
`components.weight_files` raises FileNotFoundError or ValueError naming the file.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from components.weight_files import read_state_dict


class MetricUnavailable(RuntimeError):
    """A learned metric was asked for but no weights file was given for it."""


def read_weights(path: str | Path | None, metric: str, what: str = "weights") -> tuple[Path, dict[str, Tensor]]:
    """The tensors in the state-dict file `path` for `metric`, and the path as a Path; `what` names
    the file in messages ("backbone weights", "linear heads")."""
    if path is None:
        raise MetricUnavailable(f"{metric} is unavailable: no {what} file was given")
    return Path(path), read_state_dict(path, metric, what)
