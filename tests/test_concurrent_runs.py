"""Two processes on one IMP run directory, one killed with kill -9 at several points: the finished
run equals an uninterrupted one, and no step is ever published without its files."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.imp_worker import SPEC, main
from ticketlab.experiments.imp import level_files, level_name
from ticketlab.io import read_json
from ticketlab.masks import load_mask

ROOT = Path(__file__).resolve().parents[1]
LEVELS = len(SPEC.levels) + 1


def start_worker(out, sleep):
    env = dict(
        os.environ, TICKETLAB_STEP_POLL="0.1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.imp_worker", str(out), str(sleep)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def published_steps_are_whole(out):
    for index in range(LEVELS):
        folder = out / level_name(index)
        if folder.exists():
            for name in level_files(index, LEVELS):
                assert (folder / name).is_file(), f"{folder} published without {name}"


def assert_same_run(out, reference):
    for index in range(LEVELS):
        a, b = reference / level_name(index), out / level_name(index)
        assert read_json(a / "results.json") == read_json(b / "results.json")
        if index:
            mask_a, mask_b = load_mask(a / "mask.safetensors"), load_mask(b / "mask.safetensors")
            assert mask_a.tensors.keys() == mask_b.tensors.keys()
            assert all(torch.equal(mask_a.tensors[k], mask_b.tensors[k]) for k in mask_a.tensors)
    assert read_json(reference / "results.json") == read_json(out / "results.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    main(str(out))
    return out


def claim_holders(out):
    holders = {}
    for claim in out.glob(".*.claim"):
        with contextlib.suppress(OSError, ValueError):  # being written or released right now
            holders[claim.name] = json.loads(claim.read_text())["pid"]
    return holders


@pytest.mark.parametrize("kill_after", [0.3, 1.6])
def test_two_processes_one_killed_mid_step_finish_as_one_uninterrupted_run(tmp_path, reference, kill_after):
    out = tmp_path / "run"
    workers = {w.pid: w for w in (start_worker(out, 0.6), start_worker(out, 0.6))}
    deadline = time.time() + 120
    while not claim_holders(out) and time.time() < deadline:  # both are still importing torch
        time.sleep(0.02)
    time.sleep(kill_after)
    # Kill a process while it holds a claim: inside a step, its folder half-written.
    holders = claim_holders(out)
    victim = next((pid for pid in holders.values() if pid in workers), next(iter(workers)))
    workers[victim].send_signal(signal.SIGKILL)
    workers[victim].wait()
    published_steps_are_whole(out)
    (survivor,) = (w for pid, w in workers.items() if pid != victim)
    _, errors = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, errors
    assert victim in holders.values()  # the kill did land inside a step, so it was taken over
    published_steps_are_whole(out)
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.claim"))
    assert_same_run(out, reference)


def test_both_processes_share_the_levels(tmp_path, reference):
    out = tmp_path / "run"
    workers = [start_worker(out, 0.4), start_worker(out, 0.4)]
    for worker in workers:
        _, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
    assert_same_run(out, reference)
    publishers = {read_json(out / level_name(i) / "DONE")["published_by"]["pid"] for i in range(LEVELS)}
    assert publishers <= {w.pid for w in workers}


@pytest.mark.slow
def test_two_ranks_of_one_launch_write_one_run_equal_to_one_process(tmp_path, reference):
    """torchrun with two gloo processes: the first claims and writes, both train every level with
    the same mask bits, and the run directory is what one process writes."""
    out, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "tests.imp_worker", str(out), "0", str(record)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == LEVELS - 1
    assert_same_run(out, reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    publishers = {read_json(out / level_name(i) / "DONE")["published_by"]["pid"] for i in range(LEVELS)}
    assert len(publishers) == 1  # the first rank published every level
