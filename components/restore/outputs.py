"""Which photos to restore, where their outputs go, and the report that lists every one.

Inputs are files and folders, local or in a store (`s3://...`); a folder's photos are found
at any depth and keep their sub-folders under the output. The output folder (local or a store
URI) is GFPGAN's layout, which its users know (inference_gfpgan.py):

    restored_imgs/<photo>.png            the whole photo, its faces restored
    restored_faces/<photo>_<k>.png       face k as the model wrote it (aligned)
    cropped_faces/<photo>_<k>.png        face k as it was cut from the photo (aligned)
    cmp/<photo>_<k>.png                  cropped | restored side by side (the crop enlarged
                                         to the restored side for an SR model)
    restore_report.csv                   one row per input file: status, faces, output, reason

`<photo>` is the file's path under its input folder, without its suffix. A photo whose
restored_imgs/ file exists is skipped by a rerun (status `already restored`), so a stopped
run picks up where it was; the file is written last and atomically, so it exists only
complete. Faces are numbered from 0, highest detector score first.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np

from components import storage
from components.data.schema import encode_png
from components.restore.photos import PhotoResult

REPORT = "restore_report.csv"


@dataclass(frozen=True)
class Photo:
    """An input file and its name under the output folder (no suffix)."""

    source: str
    name: str


@dataclass(frozen=True)
class ReportRow:
    input: str
    status: str      # restored | no face | failed | already restored | missing
    faces: int = 0
    output: str = ""
    reason: str = ""


REPORT_COLUMNS = tuple(f.name for f in fields(ReportRow))  # restore_report.csv's columns, in order


def find_photos(inputs: Sequence[str]) -> tuple[list[Photo], list[ReportRow]]:
    """Every file of `inputs` (files and folders, local or store URIs) with its output name, and a
    row for each input that does not exist. Hidden files are left out; other non-photos are kept,
    so an unreadable file is listed, not silently passed over."""
    photos, missing = [], []
    for given in inputs:
        uri = storage.normalize(str(given))
        if storage.is_dir(uri):
            folder = uri.rstrip("/").rpartition("/")[2]
            for relative in sorted(storage.list_files(uri)):
                if not any(part.startswith(".") for part in relative.split("/")):
                    photos.append(Photo(storage.join(uri, relative), _stem(f"{folder}/{relative}")))
        elif storage.exists(uri):
            photos.append(Photo(uri, _stem(uri.rpartition("/")[2])))
        else:
            missing.append(ReportRow(str(given), "missing", reason="no such file or folder"))
    return _distinct(photos), missing


def _distinct(photos: list[Photo]) -> list[Photo]:
    """Photos whose names collide without their suffixes (a.jpg, a.png) keep their suffixes."""
    counts: dict[str, int] = {}
    for photo in photos:
        counts[photo.name] = counts.get(photo.name, 0) + 1
    return [Photo(p.source, f"{p.name}.{p.source.rpartition('.')[2]}") if counts[p.name] > 1 else p for p in photos]


class OutputFolder:
    """GFPGAN's output layout under `root` (a local folder or a store URI)."""

    def __init__(self, root: str):
        self.root = storage.normalize(str(root))

    def restored_image(self, photo: Photo) -> str:
        return storage.join(self.root, "restored_imgs", f"{photo.name}.png")

    def done(self, photos: Iterable[Photo]) -> set[str]:
        """The names of the photos whose restored image exists (one listing, not one request each)."""
        written = storage.list_files(storage.join(self.root, "restored_imgs"))
        return {name.removesuffix(".png") for name in written if name.endswith(".png")} & {p.name for p in photos}

    def write(self, photo: Photo, result: PhotoResult) -> ReportRow:
        """The result's files, the whole photo last; its report row."""
        if result.failed:
            return ReportRow(photo.source, "failed", reason=result.reason)
        for k, face in enumerate(result.faces):
            face_name = f"{photo.name}_{k:02d}.png"
            for folder, image in (("cropped_faces", face.cropped), ("restored_faces", face.restored),
                                  ("cmp", side_by_side(face.cropped, face.restored))):
                storage.write_bytes_atomic(storage.join(self.root, folder, face_name), encode_png(image))
        target = self.restored_image(photo)
        storage.write_bytes_atomic(target, encode_png(result.image))
        return ReportRow(photo.source, result.status, len(result.faces), target, result.reason)

    def write_report(self, rows: Sequence[ReportRow]) -> str:
        """restore_report.csv: this run's rows, in input order; returns its URI."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, column) for column in REPORT_COLUMNS])
        uri = storage.join(self.root, REPORT)
        storage.write_bytes_atomic(uri, text.getvalue().encode())
        return uri


def side_by_side(cropped: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """cropped | restored, the crop enlarged (bicubic) to the restored face's side when smaller."""
    side = restored.shape[0]
    if cropped.shape[0] != side:
        cropped = cv2.resize(cropped, (side, side), interpolation=cv2.INTER_CUBIC)
    return np.concatenate([cropped, restored], axis=1)


def _stem(relative: str) -> str:
    head, _, name = relative.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base
