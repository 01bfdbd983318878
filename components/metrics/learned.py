"""The learned metrics of a benchmark (LPIPS, FID, identity similarity), loaded once from local files.

Each needs published weights that are never downloaded here (components/metrics/weights.py).
A metric whose files are not given is *unavailable*: it is listed with no value, and the report
prints "unavailable" for it, never a number from a network nobody trained. FID compares the
distributions of two image sets, so it is one number per method and split, not per image; the
identity similarity is the cosine of ArcFace embeddings of restored and true face (Wan et al.
2024 evaluate masked-face inpainting by face recognition).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

PER_IMAGE = ("lpips", "identity")
PER_SET = ("fid",)


class LearnedMetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lpips_backbone: str | None = Field(None, description="torchvision VGG16 weights (vgg16-397923af.pth)")
    lpips_heads: str | None = Field(None, description="the LPIPS v0.1 linear heads (PerceptualSimilarity vgg.pth)")
    fid_inception: str | None = Field(None, description="pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    identity_net: str | None = Field(None, description="an insightface arcface_torch backbone.pth")
    identity_depth: int = Field(50, description="its IResNet depth: 18, 34, 50 or 100")


class LearnedMetrics:
    """The networks whose files were given; `scores` fills the rest with None (unavailable)."""

    def __init__(self, cfg: LearnedMetricsConfig):
        from components.metrics import fid, identity, lpips

        self.lpips = lpips.LPIPS.from_files(cfg.lpips_backbone, cfg.lpips_heads) \
            if lpips.available(cfg.lpips_backbone, cfg.lpips_heads) else None
        self.inception = fid.InceptionFeatures.from_file(cfg.fid_inception) if fid.available(cfg.fid_inception) else None
        self.identity = identity.IdentityNet.from_file(cfg.identity_net, depth=cfg.identity_depth) \
            if identity.available(cfg.identity_net) else None

    def per_image(self, out: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The available per-image metrics, (N,) each."""
        from components.metrics.identity import identity_similarity
        from components.metrics.lpips import lpips

        values = {}
        if self.lpips is not None:
            values["lpips"] = lpips(out, target, self.lpips)
        if self.identity is not None:
            values["identity"] = identity_similarity(out, target, self.identity)
        return values

    def per_set(self, out: Tensor, target: Tensor) -> dict[str, float]:
        from components.metrics.fid import fid

        return {} if self.inception is None else {"fid": fid(out, target, self.inception)}

    @staticmethod
    def unavailable(scores: dict[str, float | None]) -> dict[str, float | None]:
        """`scores` with every learned metric it lacks listed as None."""
        return {**scores, **{name: None for name in (*PER_IMAGE, *PER_SET) if name not in scores}}
