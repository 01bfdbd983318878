"""The learned metrics of a benchmark (LPIPS, FID, identity, id_accuracy), loaded once from local files.

Each needs published weights that are never downloaded here (components/metrics/weights.py).
A metric whose files are not given is *unavailable*: it is listed with no value, and the report
prints "unavailable" for it, never a number from a network nobody trained. FID compares the
distributions of two image sets, so it is one number per method and split, not per image.
Identity (Wan et al. 2024 evaluate masked-face inpainting by face recognition) is the cosine
similarity of the embeddings of restored and true face, per image; id_accuracy, per set, the
share of restored faces whose nearest true face of the split is their own. Both come from
ArcFace when `identity_net` names its weights, else from dlib's face recognition ResNet, whose
weights install with the project (components/metrics/dlib_identity.py); `identity_network`
says which ("arcface_iresnet50", "dlib_resnet_v1").
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

PER_IMAGE = ("lpips", "identity")
PER_SET = ("fid", "id_accuracy")
EMBEDDINGS_KEPT = 4  # a task's target and the output being scored, embedded once for both kinds of metric


class LearnedMetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lpips_backbone: str | None = Field(None, description="torchvision VGG16 weights (vgg16-397923af.pth)")
    lpips_heads: str | None = Field(None, description="the LPIPS v0.1 linear heads (PerceptualSimilarity vgg.pth)")
    fid_inception: str | None = Field(None, description="pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    identity_net: str | None = Field(None, description="an insightface arcface_torch backbone.pth: identity and "
                                                       "id_accuracy from ArcFace instead of dlib's ResNet")
    identity_depth: int = Field(50, description="its IResNet depth: 18, 34, 50 or 100")
    dlib_identity: bool = Field(True, description="without identity_net: identity and id_accuracy from dlib's face "
                                                  "recognition ResNet (weights in face-recognition-models, installed "
                                                  "with the project); false: both unavailable")


def identity_recogniser(cfg: LearnedMetricsConfig) -> nn.Module | None:
    """ArcFace when its weights are named, else dlib's ResNet unless turned off; None: identity unavailable."""
    from components.metrics import identity

    if identity.available(cfg.identity_net):
        return identity.IdentityNet.from_file(cfg.identity_net, depth=cfg.identity_depth)
    if cfg.dlib_identity:
        from components.metrics.dlib_identity import DlibFaceNet

        return DlibFaceNet.from_file()
    return None


class LearnedMetrics:
    """The networks whose files were given; `scores` fills the rest with None (unavailable)."""

    def __init__(self, cfg: LearnedMetricsConfig):
        from components.metrics import fid, lpips

        self.lpips = lpips.LPIPS.from_files(cfg.lpips_backbone, cfg.lpips_heads) \
            if lpips.available(cfg.lpips_backbone, cfg.lpips_heads) else None
        self.inception = fid.InceptionFeatures.from_file(cfg.fid_inception) if fid.available(cfg.fid_inception) else None
        self.identity = identity_recogniser(cfg)
        self._embedded: list[tuple[Tensor, Tensor]] = []  # (faces, their embeddings), most recent last

    @property
    def identity_network(self) -> str | None:
        """The network behind identity and id_accuracy, for the report: "dlib_resnet_v1", "arcface_iresnet50"."""
        return None if self.identity is None else self.identity.name

    def per_image(self, out: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The available per-image metrics, (N,) each."""
        from components.metrics.identity import embedding_similarity
        from components.metrics.lpips import lpips

        _check_pair(out, target)
        values = {}
        if self.lpips is not None:
            values["lpips"] = lpips(out, target, self.lpips)
        if self.identity is not None:
            values["identity"] = embedding_similarity(self.embed(out), self.embed(target))
        return values

    def per_set(self, out: Tensor, target: Tensor) -> dict[str, float]:
        """The available per-set metrics: FID, id_accuracy."""
        from components.metrics.fid import fid
        from components.metrics.identity import id_accuracy

        _check_pair(out, target)
        values = {}
        if self.inception is not None:
            values["fid"] = fid(out, target, self.inception)
        if self.identity is not None:
            values["id_accuracy"] = id_accuracy(self.embed(out), self.embed(target), self.identity.distance)
        return values

    def embed(self, faces: Tensor) -> Tensor:
        """The identity embeddings of `faces`; the same tensor object again (a task's target, scored against
        every method) is embedded once."""
        for i, (seen, embeddings) in enumerate(self._embedded):
            if seen is faces:
                self._embedded.append(self._embedded.pop(i))
                return embeddings
        with torch.no_grad():
            embeddings = self.identity(faces).float().cpu()
        self._embedded = [*self._embedded[-(EMBEDDINGS_KEPT - 1):], (faces, embeddings)]
        return embeddings

    @staticmethod
    def unavailable(scores: dict[str, float | None]) -> dict[str, float | None]:
        """`scores` with every learned metric it lacks listed as None."""
        return {**scores, **{name: None for name in (*PER_IMAGE, *PER_SET) if name not in scores}}


def _check_pair(out: Tensor, target: Tensor) -> None:
    if out.ndim != 4 or out.shape != target.shape:
        raise ValueError(f"learned metrics need outputs and targets of one NCHW shape, got {tuple(out.shape)} "
                         f"and {tuple(target.shape)}")
