"""The blind degradation model of GFPGAN: blur -> downsample -> noise -> JPEG -> resize back.

    y = [(x * k_sigma) downsample_r + n_delta]_JPEG_q   (GFPGAN, Wang et al. 2021, eq. 1;
                                                        also Panini-Net, Wang et al. 2022)

It follows GFPGAN's `FFHQDegradationDataset.__getitem__` (gfpgan/data/ffhq_degradation_dataset.py)
step for step, with BasicSR's kernels and noise (basicsr/data/degradations.py): a 50/50 mix
of isotropic and anisotropic Gaussian blur kernels, `cv2.filter2D`, INTER_LINEAR resizes,
Gaussian noise on the 0-255 scale, OpenCV JPEG. GFPGAN's colour jitter and 1% grayscale
are augmentations of the target as well as the input, so they are left to the trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

# GFPGAN v1 `kernel_list: ['iso', 'aniso']`, `kernel_prob: [0.5, 0.5]`.
ANISOTROPIC_PROBABILITY = 0.5


class DegradationConfig(BaseModel):
    """Ranges the parameters of each sample are drawn from, uniformly.

    Defaults are GFPGAN v1's training options (options/train_gfpgan_v1.yml):
    blur_kernel_size 41, blur_sigma [0.1, 10], downsample_range [0.8, 8],
    noise_range [0, 20], jpeg_range [60, 100]. They were chosen for 512 px faces; at
    32-64 px a recipe may want narrower sigma and scale ranges.
    """

    model_config = ConfigDict(extra="forbid")

    kernel_size: int = 41  # GFPGAN v1 blur_kernel_size
    sigma: tuple[float, float] = (0.1, 10.0)  # GFPGAN v1 blur_sigma
    scale: tuple[float, float] = (0.8, 8.0)  # GFPGAN v1 downsample_range
    noise: tuple[float, float] = (0.0, 20.0)  # GFPGAN v1 noise_range, sigma on 0-255
    jpeg_quality: tuple[int, int] = (60, 100)  # GFPGAN v1 jpeg_range

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value < 1 or value % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {value}")
        return value

    @field_validator("sigma", "scale", "noise", "jpeg_quality")
    @classmethod
    def _ordered_range(cls, value: tuple, info) -> tuple:
        low, high = value
        if low > high:
            raise ValueError(
                f"{info.field_name} range must be (low, high) with low <= high, got {value}"
            )
        return value

    @model_validator(mode="after")
    def _physical_ranges(self) -> "DegradationConfig":
        checks = {
            "sigma": self.sigma[0] > 0,
            "scale": self.scale[0] > 0,
            "noise": self.noise[0] >= 0,
            "jpeg_quality": 0 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} range {getattr(self, name)} is outside its valid domain")
        return self


@dataclass(frozen=True)
class DegradationParams:
    """The parameters one sample was degraded with; stored in the shard's `degradation` column."""

    kernel_size: int
    sigma_x: float
    sigma_y: float
    theta: float
    scale: float
    noise_sigma: float
    jpeg_quality: int

    def to_row(self) -> dict:
        return asdict(self)


def sample_degradation(rng: np.random.Generator, cfg: DegradationConfig) -> DegradationParams:
    """Draw one sample's parameters, as BasicSR's `random_mixed_kernels` + GFPGAN's ranges."""
    sigma_x = float(rng.uniform(*cfg.sigma))
    if rng.uniform() < ANISOTROPIC_PROBABILITY:
        sigma_y = float(rng.uniform(*cfg.sigma))
        theta = float(rng.uniform(-np.pi, np.pi))
    else:
        sigma_y, theta = sigma_x, 0.0
    return DegradationParams(
        kernel_size=cfg.kernel_size,
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        theta=theta,
        scale=float(rng.uniform(*cfg.scale)),
        noise_sigma=float(rng.uniform(*cfg.noise)),
        jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
    )


def degrade(image: np.ndarray, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """Degrade an RGB uint8 H x W x 3 image; the result has the same shape and dtype.

    `rng` draws only the noise, so the same params and the same rng state give the same
    bytes.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degrade expects uint8 H x W x 3, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    kernel = gaussian_kernel(params.kernel_size, params.sigma_x, params.sigma_y, params.theta)
    work = cv2.filter2D(image.astype(np.float32), -1, kernel)
    small = (max(1, int(width // params.scale)), max(1, int(height // params.scale)))
    work = cv2.resize(work, small, interpolation=cv2.INTER_LINEAR)
    work = _add_noise(work, params.noise_sigma, rng)
    work = _jpeg(work, params.jpeg_quality)
    work = cv2.resize(work.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(work), 0, 255).astype(np.uint8)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate Gaussian kernel, rotated by theta, summing to 1 (BasicSR `bivariate_Gaussian`)."""
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    axis = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(axis, axis)
    grid = np.stack([xx, yy], axis=-1)
    exponent = np.einsum("...i,ij,...j->...", grid, np.linalg.inv(covariance), grid)
    kernel = np.exp(-0.5 * exponent)
    return (kernel / kernel.sum()).astype(np.float32)


def _add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image + noise, 0, 255)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    # JPEG's chroma subsampling treats channels differently; OpenCV expects BGR.
    bgr = cv2.cvtColor(np.rint(image).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed at quality {quality} for shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
