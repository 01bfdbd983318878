"""Stage leases on a local folder: one holder at a time, expiry, takeover, renewal, release."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.leases import LeaseLost, LocalLeases


def test_a_second_run_finds_the_lease_held_and_learns_by_whom(tmp_path):
    leases, uri = LocalLeases(ttl_s=60), str(tmp_path / "lease.json")
    ours, holder = leases.try_acquire(uri, "run-a")
    assert ours is not None and holder is None and ours.owner == "run-a"
    theirs, holder = leases.try_acquire(uri, "run-b")
    assert theirs is None and holder.owner == "run-a" and holder.token == ours.token


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it_lost_it(tmp_path):
    leases, uri = LocalLeases(ttl_s=0.2), str(tmp_path / "lease.json")
    dead, _ = leases.try_acquire(uri, "dead-run")
    time.sleep(0.3)
    taken, holder = leases.try_acquire(uri, "run-b")
    assert holder is None and taken.owner == "run-b" and taken.token != dead.token and taken.replaced == "dead-run"
    with pytest.raises(LeaseLost, match="run-b"):
        leases.renew(dead)
    leases.release(dead)  # a stale holder's release leaves the new lease alone
    assert leases.read(uri).token == taken.token


def test_renewal_pushes_the_expiry_and_release_frees_the_stage(tmp_path):
    leases, uri = LocalLeases(ttl_s=0.5), str(tmp_path / "lease.json")
    ours, _ = leases.try_acquire(uri, "run-a")
    time.sleep(0.3)
    renewed = leases.renew(ours)
    assert renewed.expires_at > ours.expires_at and renewed.token == ours.token
    time.sleep(0.3)  # past the first expiry, within the renewed one
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
