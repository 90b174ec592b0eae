"""The step protocol: claims, takeover of dead or expired claims, publication, damage, redo."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pytest

from ticketlab.errors import TicketlabError
from ticketlab.experiments.steps import DONE, Owner, StepBusy, StepStore


def write_file(name, text="bits"):
    def body(tmp):
        (tmp / name).write_text(text)
        return text

    return body


def plant_claim(store, name, **fields):
    """A claim file as another process would have written it."""
    owner = Owner.me(store.lease_seconds)
    owner = Owner(**{**asdict(owner), "token": "theirs", **fields})
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / f".{name}.claim").write_text(json.dumps(asdict(owner)))
    tmp = store.root / f".{name}.theirs.tmp"
    tmp.mkdir()
    (tmp / ".owner.json").write_text(json.dumps(asdict(owner)))
    (tmp / "partial.txt").write_text("half")
    return tmp


@pytest.fixture
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_a_step_is_published_whole_with_its_manifest(tmp_path):
    store = StepStore(tmp_path)
    assert store.run("a", write_file("mask.txt"), required=["mask.txt"]) == "bits"
    manifest = json.loads((tmp_path / "a" / DONE).read_text())
    assert manifest["files"] == {"mask.txt": 4}
    assert manifest["published_by"]["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".steps.lock", "a"]  # no claim, no tmp
    # finished: skipped, the result loaded
    assert (
        store.run("a", write_file("mask.txt", "other"), load=lambda p: (p / "mask.txt").read_text()) == "bits"
    )


def test_a_step_without_its_required_files_is_not_published(tmp_path):
    store = StepStore(tmp_path)
    with pytest.raises(TicketlabError, match="finished without results.json"):
        store.run("a", write_file("mask.txt"), required=["mask.txt", "results.json"])
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.claim").exists()
    # What the failed attempt wrote is kept aside for its log, never where a finished step goes.
    assert [p.name for p in tmp_path.glob(".a.*")] == [".a.failed"]
    assert (store.failed_path("a") / "mask.txt").read_text() == "bits"


def test_a_live_claim_is_never_touched(tmp_path, live_process):
    store = StepStore(tmp_path)
    theirs = plant_claim(store, "a", pid=live_process.pid, start=None)
    with pytest.raises(StepBusy, match=f"pid {live_process.pid}"):
        store.run("a", write_file("mask.txt"), wait=False)
    assert (theirs / "partial.txt").read_text() == "half"
    assert json.loads((tmp_path / ".a.claim").read_text())["token"] == "theirs"


def test_a_dead_owners_claim_and_folder_are_taken_over(tmp_path, dead_pid):
    store = StepStore(tmp_path)
    theirs = plant_claim(store, "a", pid=dead_pid)
    assert store.run("a", write_file("mask.txt"), wait=False) == "bits"
    assert not theirs.exists() and not (tmp_path / ".a.claim").exists()
    assert (tmp_path / "a" / "mask.txt").read_text() == "bits"


def test_a_claim_from_another_machine_is_taken_over_only_when_its_lease_expired(tmp_path):
    store = StepStore(tmp_path)
    theirs = plant_claim(store, "a", host="elsewhere", pid=1, lease_until=time.time() + 60)
    with pytest.raises(StepBusy):
        store.run("a", write_file("mask.txt"), wait=False)
    plant_claim_expired = {"host": "elsewhere", "pid": 1, "lease_until": time.time() - 1}
    (tmp_path / ".a.claim").write_text(
        json.dumps({**json.loads((tmp_path / ".a.claim").read_text()), **plant_claim_expired})
    )
    assert store.run("a", write_file("mask.txt"), wait=False) == "bits"
    # Its folder is left to it (it may still be alive): it finds its claim gone when it publishes.
    assert theirs.exists()


def test_an_unreadable_claim_counts_as_stale(tmp_path):
    store = StepStore(tmp_path)
    (tmp_path / ".a.claim").write_text('{"host": "half-writ')
    assert store.run("a", write_file("mask.txt"), wait=False) == "bits"


def test_a_second_thread_waits_and_shares_the_result(tmp_path):
    store = StepStore(tmp_path, poll_seconds=0.05)
    calls, results = [], []

    def slow(tmp):
        calls.append(1)
        time.sleep(0.5)
        (tmp / "mask.txt").write_text("first")
        return "first"

    load = lambda p: (p / "mask.txt").read_text()  # noqa: E731
    worker = threading.Thread(target=lambda: results.append(store.run("a", slow, load=load)))
    worker.start()
    time.sleep(0.1)
    results.append(store.run("a", slow, load=load))  # waits for the thread's claim
    worker.join()
    assert calls == [1] and sorted(results) == ["first", "first"]


def test_the_lease_is_renewed_while_the_step_runs(tmp_path):
    store = StepStore(tmp_path, lease_seconds=0.4)
    seen = []

    def body(tmp):
        first = json.loads((tmp_path / ".a.claim").read_text())["lease_until"]
        time.sleep(0.5)  # longer than the lease: without renewal it would have expired
        later = json.loads((tmp_path / ".a.claim").read_text())["lease_until"]
        seen.append((first, later))
        (tmp / "x").write_text("x")

    store.run("a", body)
    ((first, later),) = seen
    assert later > first and later > time.time() - 0.2


def test_a_step_taken_over_while_it_ran_gives_way_to_the_other_result(tmp_path):
    store = StepStore(tmp_path)

    def body(tmp):
        # Meanwhile another process judged our lease expired, took over and published.
        (tmp_path / ".a.claim").unlink()
        other = tmp_path / "a"
        other.mkdir()
        (other / "mask.txt").write_text("theirs")
        (other / DONE).write_text(json.dumps({"files": {"mask.txt": 6}}))
        (tmp / "mask.txt").write_text("mine")
        return "mine"

    assert store.run("a", body, load=lambda p: (p / "mask.txt").read_text()) == "theirs"
    assert not list(tmp_path.glob(".a.*"))


def test_a_damaged_step_names_itself_and_redo_recomputes_it(tmp_path):
    store = StepStore(tmp_path)
    store.run("level_02", write_file("mask.txt"))
    (tmp_path / "level_02" / "mask.txt").write_text("")  # emptied after publication
    with pytest.raises(
        TicketlabError, match=r"step level_02 .* damaged: mask.txt has 0 bytes.*--redo level_02"
    ):
        store.run("level_02", write_file("mask.txt"))
    (tmp_path / "level_02" / "mask.txt").unlink()
    with pytest.raises(TicketlabError, match="mask.txt is missing"):
        store.verify("level_02")
    assert store.redo("level_02") and not store.redo("level_02")
    assert store.run("level_02", write_file("mask.txt", "again")) == "again"


def test_redo_refuses_a_step_a_live_process_computes(tmp_path, live_process):
    store = StepStore(tmp_path)
    store.run("a", write_file("mask.txt"))
    plant_claim(store, "a", pid=live_process.pid, start=None)
    with pytest.raises(TicketlabError, match="computing it now"):
        store.redo("a")


def test_legacy_steps_with_an_empty_marker_stay_valid_and_are_checked(tmp_path):
    legacy = tmp_path / "level_01"
    legacy.mkdir()
    (legacy / DONE).write_text("")
    (legacy / "results.json").write_text("{}")
    store = StepStore(tmp_path)
    assert (
        store.run("level_01", write_file("x"), load=lambda p: "loaded", required=["results.json"]) == "loaded"
    )
    with pytest.raises(TicketlabError, match="mask.safetensors is missing"):
        store.run("level_01", write_file("x"), required=["results.json", "mask.safetensors"])


def test_owner_identity_tells_a_reused_pid_from_its_claimer(dead_pid):
    me = Owner.me(60)
    assert not me.is_stale() and me.host == socket.gethostname()
    assert Owner(**{**asdict(me), "pid": dead_pid}).is_stale()
    if me.start is not None:  # Linux: the same pid with another start time is another process
        assert Owner(**{**asdict(me), "start": "0"}).is_stale()


def test_a_file_step_is_claimed_and_renamed_into_place(tmp_path, live_process):
    store = StepStore(tmp_path)
    calls = []

    def body(file):
        calls.append(file.name)
        file.write_text("mask")
        return "made"

    assert store.run_file("omp-0.50.safetensors", body) == "made"
    assert store.run_file("omp-0.50.safetensors", body, load=lambda p: p.read_text()) == "mask"
    assert calls == ["omp-0.50.safetensors"] and not list(tmp_path.glob(".omp*"))
    plant_claim(store, "rnd.safetensors", pid=live_process.pid, start=None)
    with pytest.raises(StepBusy):
        store.run_file("rnd.safetensors", body, wait=False)
    with pytest.raises(TicketlabError, match="without writing its file"):
        store.run_file("other.safetensors", lambda file: None)


def test_a_finished_folder_from_before_the_protocol_is_adopted(tmp_path):
    legacy = tmp_path / "omp-0.50-seed0"
    legacy.mkdir()
    (legacy / "results.json").write_text("{}")
    half = tmp_path / "omp-0.70-seed0"
    half.mkdir()
    (half / "log.jsonl").write_text("half")
    store = StepStore(tmp_path)
    finished = lambda folder: (folder / "results.json").is_file()  # noqa: E731
    assert store.run("omp-0.50-seed0", write_file("results.json", "new"), adopt=finished) is None
    assert (legacy / "results.json").read_text() == "{}" and store.is_done("omp-0.50-seed0")
    assert store.run("omp-0.70-seed0", write_file("results.json", "new"), adopt=finished) == "new"
    assert sorted(p.name for p in half.iterdir()) == ["DONE", "results.json"]


def counting_body(fail_at=None):
    """A resumable body: continues the count in ``progress.txt`` to 3 (failing once at ``fail_at``)."""

    def body(tmp):
        file = tmp / "progress.txt"
        count = int(file.read_text()) if file.exists() else 0
        body.started_at.append(count)
        while count < 3:
            count += 1
            file.write_text(str(count))
            if count == fail_at:
                raise KeyboardInterrupt
        (tmp / "result.txt").write_text("done")
        return count

    body.started_at = []
    return body


def test_a_resumable_step_keeps_its_work_when_stopped_and_the_next_claimer_continues(tmp_path):
    store = StepStore(tmp_path)
    body = counting_body(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        store.run("a", body, required=["result.txt"], resumable=True)
    # Kept for the next claimer, never published, the claim released.
    assert (store.partial_path("a") / "progress.txt").read_text() == "2"
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.claim").exists()
    again = counting_body()
    assert store.run("a", again, required=["result.txt"], resumable=True) == 3
    assert again.started_at == [2] and not store.partial_path("a").exists()
    assert json.loads((tmp_path / "a" / DONE).read_text())["files"] == {"progress.txt": 1, "result.txt": 4}
    # A step that is not resumable keeps nothing of an interrupted attempt (as before).
    with pytest.raises(KeyboardInterrupt):
        store.run("b", counting_body(fail_at=2))
    assert [p.name for p in tmp_path.glob(".b.*")] == []


def test_a_dead_owners_resumable_work_is_continued_and_redo_forgets_it(tmp_path, dead_pid):
    store = StepStore(tmp_path)
    theirs = plant_claim(store, "a", pid=dead_pid)
    (theirs / "progress.txt").write_text("1")
    body = counting_body()
    assert store.run("a", body, resumable=True, wait=False) == 3
    assert body.started_at == [1] and not theirs.exists()
    # The work of a claimer killed later is kept for the next one; --redo starts from nothing.
    store.redo("a")
    theirs = plant_claim(store, "a", pid=dead_pid)
    (theirs / "progress.txt").write_text("2")
    store._sweep("a", resumable=True)
    assert (store.partial_path("a") / "progress.txt").read_text() == "2"
    store.redo("a")
    assert not store.partial_path("a").exists()
    (tmp_path / ".a.claim").unlink()
    fresh = counting_body()
    assert store.run("a", fresh, resumable=True) == 3 and fresh.started_at == [0]


def test_adopted_files_become_the_partial_work_of_a_step(tmp_path):
    store = StepStore(tmp_path / "run")
    old = tmp_path / "old-progress.txt"
    old.write_text("2")
    assert store.adopt_partial("a", {"progress.txt": old}) and not old.exists()
    body = counting_body()
    assert store.run("a", body, resumable=True) == 3 and body.started_at == [2]
    assert not store.adopt_partial("a", {"progress.txt": tmp_path / "none.txt"})
