"""The live view of a grid run by parallel workers (the local and the Ray executors alike).

The driver polls the run directory, which every worker shares: a step is *done* when published,
*running* while a live process holds its claim (the claim names the worker), *failed* when a worker
recorded its failure (``failures``), *blocked* when a step it needs failed, and *waiting* otherwise.
On a terminal a progress bar shows the counts and the current step of each worker; with ``quiet``
or when the stream is not a terminal (a log file, CI), one line per finished or failed step. At
the end, a summary names each failed step, its error line and its traceback and log files.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm

from ticketlab.experiments.grid.failures import StepFailure, blocked_steps, read_failures
from ticketlab.experiments.grid.plan import GridStep
from ticketlab.experiments.grid.run import GridRunner


class GridView:
    """Progress of ``plan`` in ``runner``'s run directory; ``poll()`` often, ``close()`` once."""

    def __init__(
        self, runner: GridRunner, plan: list[GridStep], *, quiet: bool = False, stream: TextIO | None = None
    ):
        self.runner = runner
        self.plan = plan
        self.stream = stream or sys.stdout
        self.live = not quiet and _is_terminal(self.stream)
        self.done = {step.key for step in plan if runner.step_done(step)}
        self.failures: dict[str, StepFailure] = {}
        self.running: dict[str, str] = {}  # step -> the worker that holds it
        self.counts: dict[str, int] = {}
        self._bar = tqdm(
            total=len(plan),
            initial=len(self.done),
            desc="grid",
            unit="step",
            file=self.stream,
            disable=not self.live,
            dynamic_ncols=True,
            leave=True,
        )
        if self.done and not self.live:
            self._line(f"{len(self.done)} of {len(plan)} steps already done")

    def _line(self, text: str) -> None:
        if self.live:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def poll(self) -> dict[str, int]:
        """Look at the run directory once; report what finished or failed since the last look.
        Returns the counts: done, running, failed, blocked, waiting."""
        failures = read_failures(self.runner.root)
        running: dict[str, str] = {}
        for step in self.plan:
            if step.key in self.done:
                continue
            if self.runner.step_done(step):
                self.done.add(step.key)
                if self.live:
                    self._bar.update(1)
                else:
                    self._line(f"[{len(self.done)}/{len(self.plan)}] done {step.key}")
                continue
            if step.key not in failures and (holder := self.runner.step_holder(step)):
                running[step.key] = holder
        # A step that failed once and was then made (a retry) counts as done.
        failures = {key: f for key, f in failures.items() if key not in self.done}
        for key, failure in failures.items():
            if key not in self.failures:
                self._line(f"[{len(self.done)}/{len(self.plan)}] failed {failure.step}: {failure.error}")
        self.failures = failures
        self.running = running
        left = [s for s in self.plan if s.key not in self.done]
        blocked = blocked_steps(left, set(failures))
        self.counts = {
            "done": len(self.done),
            "running": len(running),
            "failed": len(failures),
            "blocked": len(blocked),
            "waiting": len(left) - len(running) - len(failures) - len(blocked),
        }
        if self.live:
            counts = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v and k != "done")
            workers = "; ".join(
                f"{worker}: {key}" for key, worker in sorted(running.items(), key=lambda kv: kv[1])
            )
            self._bar.set_postfix_str(" | ".join(p for p in (counts, workers) if p), refresh=True)
        return self.counts

    def close(self) -> list[StepFailure]:
        """A last look, then the failure summary; returns the failures."""
        self.poll()
        self._bar.close()
        failures = list(self.failures.values())
        if failures:
            print(f"{len(failures)} step(s) failed:", file=self.stream)
            for failure in failures:
                print(f"  {failure.describe()}", file=self.stream)
        if self.counts.get("blocked"):
            print(f"{self.counts['blocked']} step(s) not run: a step they need failed", file=self.stream)
        self.stream.flush()
        return failures


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
