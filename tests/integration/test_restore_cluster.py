"""`restore` at scale: Ray Data over a pool of 2 actors on the shared test Ray, and a bucket of
photos on an S3-protocol store restored into the bucket by `facerestore restore` as a user runs it.

The photos are scikit-image's astronaut (a real photo) tiled 1-3 times into a canvas, so each
holds a known number of real faces for MTCNN to find.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from components.data.schema import decode_png, encode_png
from components.models import build_method
from components.models.files import save_model_dir
from tests.integration.ray_head import ROOT, clean_env
from tests.integration.servers import s3_server

pytestmark = pytest.mark.integration

BUCKET = "photos"


def group_photo(faces: int) -> np.ndarray:
    """`faces` copies of the astronaut's head and shoulders side by side, 200 x 200 each."""
    from skimage import data

    head = cv2.resize(data.astronaut()[20:320, 90:390], (200, 200), interpolation=cv2.INTER_AREA)
    return np.concatenate([head] * faces, axis=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    state, config = build_method("baseline", {"width": 8, "depth": 2}).export()
    directory = tmp_path_factory.mktemp("model") / "baseline"
    save_model_dir(str(directory), state, {**config, "data": {"resolution": 32, "sr_factor": None}})
    return directory


def write_photos(folder: Path) -> dict[str, int]:
    """Five photos of 1-3 faces and one unreadable file; name -> faces."""
    folder.mkdir(parents=True)
    counts = {f"group_{k}.png": faces for k, faces in enumerate((1, 2, 3, 1, 2))}
    for name, faces in counts.items():
        (folder / name).write_bytes(encode_png(group_photo(faces)))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    return counts


def test_two_actors_on_the_shared_ray_restore_every_photo_find_every_face_and_a_rerun_skips_them(
        ray_address, model_dir, tmp_path):
    from components.restore import restore_on_cluster

    counts = write_photos(tmp_path / "in")
    summary = restore_on_cluster(str(model_dir), [str(tmp_path / "in")], str(tmp_path / "out"), actors=2)
    rows = {row.input.rpartition("/")[2]: row for row in summary.rows}
    assert {name: rows[name].faces for name in counts} == counts
    assert rows["broken.jpg"].status == "failed" and "decodable" in rows["broken.jpg"].reason
    for name, faces in counts.items():
        stem = name.removesuffix(".png")
        assert decode_png((tmp_path / "out" / "restored_imgs" / "in" / f"{stem}.png").read_bytes()).shape == (200, 200 * faces, 3)
        assert sorted(p.name for p in (tmp_path / "out" / "restored_faces" / "in").glob(f"{stem}_*.png")) == \
            [f"{stem}_{k:02d}.png" for k in range(faces)]
    written = list(csv.DictReader(io.StringIO((tmp_path / "out" / "restore_report.csv").read_text())))
    assert len(written) == 6
    again = restore_on_cluster(str(model_dir), [str(tmp_path / "in")], str(tmp_path / "out"), actors=2)
    assert sorted(row.status for row in again.rows) == ["already restored"] * 5 + ["failed"]


def test_actors_restore_with_the_onnxruntime_backend_as_torch_does_here(ray_address, model_dir, tmp_path):
    import shutil

    from components.export.onnx import export_onnx
    from components.restore import restore_here, restore_on_cluster

    exported = tmp_path / "exported"
    shutil.copytree(model_dir, exported)
    export_onnx(str(exported))
    folder = tmp_path / "in"
    folder.mkdir()
    for faces in (1, 2):
        (folder / f"group_{faces}.png").write_bytes(encode_png(group_photo(faces)))
    by_actors = restore_on_cluster(str(exported), [str(folder)], str(tmp_path / "onnx"), actors=1, backend="onnxruntime")
    restore_here(str(model_dir), [str(folder)], str(tmp_path / "torch"))
    assert sorted(row.faces for row in by_actors.rows) == [1, 2]
    for written in (tmp_path / "torch" / "restored_imgs" / "in").iterdir():
        a = decode_png(written.read_bytes()).astype(int)
        b = decode_png((tmp_path / "onnx" / "restored_imgs" / "in" / written.name).read_bytes()).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_restore_reads_a_bucket_and_writes_its_outputs_and_report_into_the_bucket(model_dir, tmp_path):
    import boto3

    with s3_server(tmp_path) as s3, pytest.MonkeyPatch.context() as mp:
        settings = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in settings.items():
            mp.setenv(name, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        counts = write_photos(tmp_path / "local")
        for path in sorted((tmp_path / "local").iterdir()):
            client.put_object(Bucket=BUCKET, Key=f"in/{path.name}", Body=path.read_bytes())
        # no RAY_ADDRESS: an s3:// input starts a local Ray, whose workers get this environment
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "restore", f"s3://{BUCKET}/in", "--model",
                               str(model_dir), "--out", f"s3://{BUCKET}/out", "--actors", "2"],
                              cwd=ROOT, env={**clean_env(**settings), "COLUMNS": "200"}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr  # the broken file
        assert f"restored 5 photo(s), {sum(counts.values())} face(s)" in done.stdout, done.stdout
        assert "broken.jpg" in done.stdout
        keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"])
        assert "out/restore_report.csv" in keys
        assert [k for k in keys if k.startswith("out/restored_imgs/") and not k.endswith("/")] == \
            sorted(f"out/restored_imgs/in/{name.removesuffix('.png')}.png" for name in counts)
        report = client.get_object(Bucket=BUCKET, Key="out/restore_report.csv")["Body"].read().decode()
        assert len(list(csv.DictReader(io.StringIO(report)))) == 6
