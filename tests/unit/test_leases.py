"""Stage leases: one holder at a time, expiry, takeover, renewal, release; on a local folder and on
S3 (moto's in-process S3, which honours the conditional writes `If-None-Match: *` and `If-Match`)."""

from __future__ import annotations

import threading
import time

import pytest

from components.storage import S3_ENDPOINT_VARIABLES
from pipelines.leases import LeaseLost, LocalLeases, S3Leases


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    """(lease class, where a lease lives): a local folder or a bucket."""
    if request.param == "local":
        yield LocalLeases, str(tmp_path / "lease.json")
        return
    import boto3
    from moto import mock_aws

    for name in S3_ENDPOINT_VARIABLES:  # moto answers for AWS itself, not a named endpoint
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="leases")
        yield S3Leases, "s3://leases/leases/train/abc.json"


def test_a_second_run_finds_the_lease_held_and_learns_by_whom(store):
    kind, uri = store
    leases = kind(ttl_s=60)
    ours, holder = leases.try_acquire(uri, "run-a")
    assert ours is not None and holder is None and ours.owner == "run-a"
    theirs, holder = leases.try_acquire(uri, "run-b")
    assert theirs is None and holder.owner == "run-a" and holder.token == ours.token


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it_lost_it(store):
    kind, uri = store
    leases = kind(ttl_s=0.2)
    dead, _ = leases.try_acquire(uri, "dead-run")
    time.sleep(0.3)
    taken, holder = leases.try_acquire(uri, "run-b")
    assert holder is None and taken.owner == "run-b" and taken.token != dead.token and taken.replaced == "dead-run"
    with pytest.raises(LeaseLost, match="run-b"):
        leases.renew(dead)
    leases.release(dead)  # a stale holder's release leaves the new lease alone
    assert leases.read(uri).token == taken.token
    assert getattr(leases, "conditional", True)  # on S3: by conditional writes, not the best-effort fallback


def test_renewal_pushes_the_expiry_and_release_frees_the_stage(store):
    kind, uri = store
    leases = kind(ttl_s=2.0)
    ours, _ = leases.try_acquire(uri, "run-a")
    time.sleep(1.0)
    renewed = leases.renew(ours)
    assert renewed.expires_at > ours.expires_at and renewed.token == ours.token
    # Just past the first expiry, well within the renewed one (timed from the leases' own clock,
    # so a slow renewal on a loaded machine does not eat the margin).
    time.sleep(max(0.0, ours.expires_at + 0.1 - time.time()))
    assert time.time() < renewed.expires_at - 0.3
    assert leases.try_acquire(uri, "run-b")[0] is None
    leases.release(renewed)
    assert leases.read(uri) is None and leases.try_acquire(uri, "run-b")[0] is not None


def test_of_many_runs_taking_one_expired_lease_at_once_exactly_one_wins(tmp_path):
    leases, uri = LocalLeases(ttl_s=0.1), str(tmp_path / "lease.json")
    leases.try_acquire(uri, "dead-run")
    time.sleep(0.2)
    winners, start = [], threading.Barrier(8)

    def contend(name: str) -> None:
        start.wait()
        ours, _ = LocalLeases(ttl_s=60).try_acquire(uri, name)
        if ours is not None:
            winners.append(name)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and leases.read(uri).owner == winners[0]


def test_an_unreadable_lease_counts_as_expired(tmp_path):
    uri = tmp_path / "lease.json"
    uri.write_text("{not json")
    ours, holder = LocalLeases(ttl_s=60).try_acquire(str(uri), "run-a")
    assert ours is not None and holder is None
