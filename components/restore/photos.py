"""Restore the faces of ordinary photos: find them, align them, restore them in batches, paste them back.

For each photo (GFPGAN's and CodeFormer's flow, docs/methods.md "Restoring photos"):
1. MTCNN finds the faces and their 5 landmarks (components/face_detection); faces whose box
   is smaller than `min_face` pixels are left as they are, and said so.
2. Each face is warped to the FFHQ template at the model's input side (components/restore/
   alignment.py). An inpainting model's mask, given in photo coordinates, is warped with it.
3. The crops of a group of photos go through the network together, `batch_size` at a time.
4. Each restored face is warped back and blended into the photo with a feathered mask. An SR
   model's photo is first enlarged `sr_factor` times (Lanczos), and its faces come from the
   model. An inpainting model changes only the holes: every known pixel stays exactly as
   given, and holes outside every face are filled by OpenCV's Telea, the classical baseline.

`aligned=True` takes each photo as an already aligned face crop: resized to the model's
input side, restored, resized back (INTER_AREA shrinking, bicubic enlarging).

Memory: only the face crops go through the network, and warping works on the photo's region
under each face (alignment.py), so a large photo costs its own pixels (3 bytes each, twice:
input and output) plus the detector's downscaled copy, not a network pass at its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from components.data.schema import holes_of_mask_image
from components.data.sources import ImageLimits, SkippedImage, images_by_stem, read_photo
from components.restore.alignment import FaceRegion, crop_face, face_region, paste_face
from components.restore.model import Restorer, RestoreError

# The detector searches faces down to this side, so faces just under `min_face` are still
# found and reported as too small rather than missed without a word
DETECTOR_MIN_FACE = 16
# A face this many times larger in the output than the model restores it gets a note in its row:
# beyond about 4x an enlarged face looks visibly soft.
ENLARGED_FACE = 4.0
GROUP_PIXELS = 24_000_000  # photos held at once for one network pass, at most about this many pixels


@dataclass(frozen=True)
class RestoreOptions:
    aligned: bool = False             # photos are aligned face crops: no detection
    only_center_face: bool = False    # the face nearest the photo's centre only
    min_face: int = 24                # pixels: a face whose box is smaller is left as it is
    batch_size: int = 8               # faces per network pass
    max_input_megapixels: float = 64.0  # larger photos are refused from their header
    max_output_pixels: int = 100_000_000  # an SR model refuses a larger output, naming its size
    detector_weights: str | None = None  # a folder with pnet.pt, rnet.pt, onet.pt


@dataclass
class Face:
    """One restored face of a photo: the aligned input crop and the model's output."""

    cropped: np.ndarray
    restored: np.ndarray


@dataclass
class PhotoResult:
    source: str
    status: str                     # restored | no face | failed
    reason: str = ""
    image: np.ndarray | None = None  # what to write to restored_imgs/ (None when failed)
    faces: list[Face] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class _Pending:
    """A photo between detection and paste-back."""

    source: str
    photo: np.ndarray
    holes: np.ndarray | None
    landmarks: list[np.ndarray]
    regions: list[FaceRegion]       # each face's region at the model's input side
    crops: list[np.ndarray]
    crop_holes: list[np.ndarray]
    notes: list[str]


class PhotoMasks:
    """The holes (1 = missing) an inpainting model gets with each photo, from `--mask`: one mask
    image for every photo, or a folder holding each photo's own, the image with the photo's file
    stem (`a.jpg`'s is `a.png`), as `facerestore score --mask-dir` pairs files. A pixel is a hole
    where the mask is white (`schema.holes_of_mask_image`). A single mask that cannot be read
    stops the run; a photo whose mask is missing from the folder, shared by two files or
    unreadable fails alone, naming it."""

    def __init__(self, mask: str):
        from components import storage

        self.source = mask
        self.folder = storage.is_dir(mask)
        if self.folder:
            self.by_stem, self.shared = images_by_stem(mask)
        else:
            self.every_photo = self._read(mask, mask)

    def holes_for(self, photo_source: str) -> np.ndarray:
        if not self.folder:
            return self.every_photo
        from components import storage

        stem = photo_source.rpartition("/")[2].rpartition(".")[0] or photo_source.rpartition("/")[2]
        if stem in self.shared:
            raise RestoreError(f"masks {', '.join(self.shared[stem])} in {self.source} share this photo's name {stem}: "
                               "which one is its mask is ambiguous")
        if stem not in self.by_stem:
            raise RestoreError(f"no mask named {stem}.* in {self.source}")
        return self._read(storage.join(self.source, self.by_stem[stem]), self.by_stem[stem])

    @staticmethod
    def _read(uri: str, name: str) -> np.ndarray:
        try:
            return holes_of_mask_image(read_photo(uri))
        except SkippedImage as err:
            raise RestoreError(f"mask {name}: {err.reason}") from None


def require_mask(restorer: Restorer, mask: object) -> None:
    """RestoreError naming --mask when an inpainting model gets no holes."""
    if restorer.task.needs_mask and mask is None:
        raise RestoreError(f"'{restorer.model.name}' is an {restorer.task.name} model: give the holes with --mask")


def enlarged_faces_note(regions: list[FaceRegion], model_side: int) -> list[str]:
    """A note on the faces much larger in the output than the model writes them (a 32 px model
    on a 300 px face): they are restored at the model's side and enlarged back, so their detail
    is the model's, not the photo's. Empty when none is."""
    # A region's scale is photo pixels per crop pixel, which is also output pixels per restored
    # pixel for an SR model: its photo and its faces are both sr_factor times larger.
    large = [region.scale for region in regions if region.scale > ENLARGED_FACE]
    if not large:
        return []
    return [f"{len(large)} face(s) restored at the model's {model_side} px and enlarged back up to "
            f"{max(large):.1f}x: a model trained at a larger resolution keeps more of their detail"]


class PhotoRestorer:
    """A model and, unless photos are aligned crops, the face detector: loaded once, for many photos."""

    def __init__(self, restorer: Restorer, options: RestoreOptions = RestoreOptions(), detector: Any = None):
        """`detector`: anything with MTCNN's `detect(photos) -> [[Face]]`; default MTCNN itself."""
        self.restorer, self.options, self.detector = restorer, options, detector
        if detector is None and not options.aligned:
            from components.face_detection import FaceDetector

            self.detector = FaceDetector(options.detector_weights, min_face=min(DETECTOR_MIN_FACE, options.min_face),
                                         device=restorer.device)

    def restore(self, sources: Iterable[str], masks: PhotoMasks | None = None) -> Iterator[tuple[str, PhotoResult]]:
        """Each photo (a local path or store URI) with its result, in order; a photo that cannot be
        restored is a failed result naming why, and the others go on. `masks`: each photo's holes
        (inpainting). Photos are held until their faces fill a batch, or their pixels reach
        GROUP_PIXELS, so big photos are not held many at a time."""
        require_mask(self.restorer, masks)
        held: list[_Pending | PhotoResult] = []
        for source in sources:
            try:
                held.append(self._prepare(source, masks.holes_for(source) if self.restorer.task.needs_mask else None))
            except (SkippedImage, RestoreError) as err:
                held.append(PhotoResult(source, "failed", getattr(err, "reason", None) or str(err)))
            pending = [item for item in held if isinstance(item, _Pending)]
            if (sum(len(p.crops) for p in pending) >= self.options.batch_size
                    or sum(p.photo.size for p in pending) >= 3 * GROUP_PIXELS):
                yield from self._flush(held)
                held = []
        yield from self._flush(held)

    def _flush(self, held: list[_Pending | PhotoResult]) -> Iterator[tuple[str, PhotoResult]]:
        pending = [item for item in held if isinstance(item, _Pending)]
        crops = [crop for p in pending for crop in p.crops]
        holes = [h for p in pending for h in p.crop_holes] if self.restorer.task.needs_mask else None
        restored = iter(self.restorer.restore_crops(crops, holes, self.options.batch_size))
        for item in held:
            if isinstance(item, PhotoResult):
                yield item.source, item
            else:
                yield item.source, self._finish(item, [Face(crop, next(restored)) for crop in item.crops])

    # -- one photo -----------------------------------------------------------------------------
    def _prepare(self, source: str, mask: np.ndarray | None) -> _Pending:
        photo = read_photo(source, ImageLimits(min_side=1, max_megapixels=self.options.max_input_megapixels))
        height, width = photo.shape[:2]
        scale = self.restorer.sr_factor
        if scale > 1 and height * width * scale * scale > self.options.max_output_pixels:
            raise RestoreError(f"the output would be {width * scale}x{height * scale} ({height * width * scale * scale:,} "
                               f"pixels), over --max-output-pixels {self.options.max_output_pixels:,}")
        holes = None
        if self.restorer.task.needs_mask:
            if mask.shape != (height, width):
                raise RestoreError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {width}x{height}")
            holes = mask
        side = self.restorer.input_side
        if self.options.aligned:
            crop_holes = [_resize(holes, side, side, nearest=True)] if holes is not None else []
            return _Pending(source, photo, holes, [], [], [_resize(photo, side, side)], crop_holes, [])
        landmarks, notes = self._find_faces(photo)
        regions = [face_region(points, side, photo.shape) for points in landmarks]
        notes += enlarged_faces_note(regions, self.restorer.resolution)
        crops = [crop_face(photo, region) for region in regions]
        crop_holes = [crop_face(holes, region, nearest=True) for region in regions] if holes is not None else []
        return _Pending(source, photo, holes, landmarks, regions, crops, crop_holes, notes)

    def _find_faces(self, photo: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """The landmarks of each face to restore, and notes on the faces left alone."""
        found = self.detector.detect([photo])[0]
        big_enough = [min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.options.min_face for f in found]
        faces = [f for f, keep in zip(found, big_enough, strict=True) if keep]
        small = len(found) - len(faces)
        if self.options.only_center_face and faces:
            centre = np.array(photo.shape[1::-1], dtype=np.float64) / 2
            faces = [min(faces, key=lambda f: float(np.linalg.norm(np.asarray(f.box).reshape(2, 2).mean(0) - centre)))]
        notes = [f"{small} face(s) under --min-face {self.options.min_face} px left as they are"] if small else []
        return [f.landmarks for f in faces], notes

    def _finish(self, item: _Pending, faces: list[Face]) -> PhotoResult:
        restorer = self.restorer
        if self.options.aligned:
            height, width = item.photo.shape[:2]
            out = _resize(faces[0].restored, width * restorer.sr_factor, height * restorer.sr_factor)
            if item.holes is not None and restorer.task.keeps_known:
                out = np.where(item.holes[..., None].astype(bool), out, item.photo)
            return PhotoResult(item.source, "restored", image=out, faces=faces)
        out = self._enlarged(item.photo)
        if item.holes is not None:  # holes no face covers: the classical fill; faces go on top
            out = cv2.inpaint(item.photo, item.holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
        for k, face in enumerate(faces):
            # an SR model's faces land in the enlarged photo at its output side; others where they were cut
            region = item.regions[k] if restorer.sr_factor == 1 else \
                face_region(item.landmarks[k], restorer.resolution, out.shape, scale=restorer.sr_factor)
            paste_face(out, face.restored, region, item.crop_holes[k] if item.holes is not None else None)
        if item.holes is not None:  # every known pixel exactly as given
            out = np.where(item.holes[..., None].astype(bool), out, item.photo)
        reason = "; ".join(item.notes)
        if not faces:
            return PhotoResult(item.source, "no face", reason or "no face found: written unchanged", image=out)
        return PhotoResult(item.source, "restored", reason, image=out, faces=faces)

    def _enlarged(self, photo: np.ndarray) -> np.ndarray:
        scale = self.restorer.sr_factor
        if scale == 1:
            return photo.copy()
        height, width = photo.shape[:2]
        return cv2.resize(photo, (width * scale, height * scale), interpolation=cv2.INTER_LANCZOS4)


def _resize(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return cv2.resize(image, (width, height), interpolation=interpolation)
