"""What the step protocol costs per step: claim, temporary folder, manifest, rename, release.

Empty steps (one small file each) through ``StepStore.run`` against the same files written with a
plain ``atomic_write``, side by side in one run; and reading a finished step back (verification).

    PYTHONPATH=src python benchmarks/bench_steps.py [--steps 500]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench_common import summary, timed, write_results


def one_round(store, plain_root: Path, body, atomic_write, steps: int) -> tuple[float, float, float]:
    """Seconds per step: new steps through the protocol, the same steps read back, plain writes."""

    def run_all() -> None:
        for i in range(steps):
            store.run(f"s{i}", body, required=["results.json"])

    def write_plain() -> None:
        for i in range(steps):
            folder = plain_root / f"s{i}"
            folder.mkdir(parents=True)
            atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text('{"accuracy": 0.5}\n'))

    first, _ = timed(run_all)
    again, _ = timed(run_all)
    direct, _ = timed(write_plain)
    return first / steps, again / steps, direct / steps


def main() -> None:
    from ticketlab.experiments.steps import StepStore
    from ticketlab.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    def body(tmp: Path) -> None:
        (tmp / "results.json").write_text('{"accuracy": 0.5}\n')

    protocol, plain, reread = [], [], []
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="bench_steps."))
        first, again, direct = one_round(
            StepStore(work / "steps"), work / "plain", body, atomic_write, args.steps
        )
        protocol.append(first)
        reread.append(again)
        plain.append(direct)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "steps": args.steps,
        "protocol_s_per_step": summary(protocol),
        "plain_atomic_write_s_per_step": summary(plain),
        "finished_step_read_s": summary(reread),
        "protocol_over_plain": summary(protocol)["median_s"] / summary(plain)["median_s"],
    }
    for key in ("protocol_s_per_step", "plain_atomic_write_s_per_step", "finished_step_read_s"):
        print(f"{key}: {result[key]['median_s'] * 1e3:.2f} ms")
    print(f"results written to {write_results('steps', result)}")


if __name__ == "__main__":
    main()
