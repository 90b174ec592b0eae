"""The step protocol: how every unit of work that writes results is claimed, written and published.

A *step* is a folder of a store (a run directory) that appears only when finished. Any number of
processes (two ``ticketlab imp`` commands a user started by mistake, the workers of a sweep, the
ranks of a job) may share a store; each step is computed once, and nobody ever reads or deletes
another's half-written work:

1. **Claim.** Before it runs, a step is claimed: ``.<name>.claim``, created with ``O_EXCL``, holds
   the owner (host, boot id, pid and the pid's start time) and a lease that a thread renews while
   the owner works. A live claim is never touched: another process waits for the step (or, asked
   not to wait, moves on). A claim whose owner is dead (same host, pid gone) or whose lease has
   expired (any host) is taken over.
2. **Write.** The owner writes into its own temporary folder ``.<name>.<token>.tmp``.
3. **Publish.** Once every file the step must hold is there, a ``DONE`` manifest (each file and
   its size) is written into the folder and the folder is renamed into place: one atomic rename, so
   a step folder either does not exist or holds everything. Then the claim is released.

A step whose body checkpoints itself (TAMT's mask training) is *resumable*: its folder is work in
progress worth keeping. When such a body fails or is interrupted, its folder is kept as
``.<name>.partial``, and a folder left by a dead owner is kept there too rather than swept; the
next claimer starts in it (``body`` finds its checkpoint) instead of an empty folder.

Reading a finished step checks it against its manifest, so a file truncated or emptied later gives
one line naming the step and how to redo it (``--redo NAME`` or deleting the folder), never a
silent skip. Step folders written before the manifest existed hold an empty ``DONE``; they stay
valid (their required files are still checked).

Claim transitions (create, take over, renew, release, publish) are serialised by an advisory lock
(``fcntl.flock``) on ``.steps.lock`` in the store, held for milliseconds. Stores shared between
machines must be on a file system with working ``flock`` (local disks, NFSv4, Lustre, most cluster
file systems) and clocks roughly in step: an expired lease is judged by wall time.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write
from ticketlab.training.distributed import broadcast_from_first, rank_and_world

log = logging.getLogger(__name__)

T = TypeVar("T")
DONE = "DONE"
LOCK_FILE = ".steps.lock"
MANIFEST_FORMAT = "ticketlab-step"
# Lease and polling intervals: environment overrides are for tests and for slow shared file systems.
DEFAULT_LEASE_SECONDS = 120.0
DEFAULT_POLL_SECONDS = 2.0


class StepBusy(Exception):
    """Raised by ``StepStore.run(..., wait=False)`` when another live process holds the step."""

    def __init__(self, name: str, owner: Owner):
        super().__init__(f"step {name} is being computed by {owner.describe()}")
        self.name = name
        self.owner = owner


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, Linux); tells a pid reused by another
    process from the one that claimed. None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a claim. ``token`` identifies the claim itself (and its temporary folder)."""

    host: str
    boot: str
    pid: int
    start: str | None
    token: str
    claimed_at: float
    lease_until: float

    @classmethod
    def me(cls, lease_seconds: float) -> Owner:
        now = time.time()
        return cls(
            host=socket.gethostname(),
            boot=_boot_id(),
            pid=os.getpid(),
            start=_process_start(os.getpid()),
            token=uuid.uuid4().hex[:16],
            claimed_at=now,
            lease_until=now + lease_seconds,
        )

    def renewed(self, lease_seconds: float) -> Owner:
        return Owner(**{**asdict(self), "lease_until": time.time() + lease_seconds})

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname() and self.boot == _boot_id()

    def is_stale(self) -> bool:
        """Dead (on this machine: its pid is gone or belongs to a newer process) or past its lease."""
        if time.time() > self.lease_until:
            return True
        if self.on_this_machine():
            if not _pid_alive(self.pid):
                return True
            return self.start is not None and _process_start(self.pid) not in (None, self.start)
        return False

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _follows_links(method: Callable[..., T]) -> Callable[..., T]:
    """A step whose place is a symbolic link (a grid's readable name for a step of a shared,
    hash-named store) is the step the link names, in the store the link points into: claimed,
    written and published there, so every grid linking to it shares one step."""

    @functools.wraps(method)
    def through(self: StepStore, name: str, *args: Any, **kwargs: Any) -> T:
        place = self.root / name
        if place.is_symlink():
            target = self.root / os.readlink(place)  # relative links are relative to their folder
            store = StepStore(target.parent, lease_seconds=self.lease_seconds, poll_seconds=self.poll_seconds)
            store.link_places[target.name] = place  # what messages name: the place the user knows
            return method(store, target.name, *args, **kwargs)
        return method(self, name, *args, **kwargs)

    return through


class StepStore:
    """The steps of one folder (a run directory). ``run(name, body)`` is the one way to write one.
    A step's place may be a symbolic link to a step of another store (``_follows_links``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        lease_seconds: float | None = None,
        poll_seconds: float | None = None,
    ):
        self.root = Path(root)
        self.lease_seconds = lease_seconds or float(
            os.environ.get("TICKETLAB_STEP_LEASE", DEFAULT_LEASE_SECONDS)
        )
        self.poll_seconds = poll_seconds or float(os.environ.get("TICKETLAB_STEP_POLL", DEFAULT_POLL_SECONDS))
        # Steps of this store reached through a link (a grid's place): name -> the place.
        self.link_places: dict[str, Path] = {}

    # -- where things are ----------------------------------------------------------------------
    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"a step name is one plain file name, not {name!r} (a store per folder)")
        return self.root / name

    def _claim_path(self, name: str) -> Path:
        return self.root / f".{name}.claim"

    def _tmp_path(self, name: str, token: str) -> Path:
        return self.root / f".{name}.{token}.tmp"

    @_follows_links
    def is_done(self, name: str) -> bool:
        return (self.path(name) / DONE).is_file()

    @_follows_links
    def owner_of(self, name: str) -> Owner | None:
        """The claim on ``name``, or None. A claim file that cannot be read (a process killed while
        writing one) counts as stale."""
        try:
            data = json.loads(self._claim_path(name).read_text())
            return Owner(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return Owner("?", "?", -1, None, "unreadable", 0.0, 0.0)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- finished steps ------------------------------------------------------------------------
    @_follows_links
    def verify(self, name: str, required: Iterable[str] = ()) -> None:
        """Check a finished step against its manifest and ``required`` files; a one-line error
        naming the step and how to redo it when something is missing, emptied or truncated."""
        folder = self.path(name)
        problem = None
        try:
            text = (folder / DONE).read_text()
            manifest = json.loads(text) if text.strip() else {"files": {}}
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = f"its {DONE} marker cannot be read ({error})"
            files = {}
        for rel, size in files.items():
            if problem:
                break
            file = folder / rel
            if not file.is_file():
                problem = f"{rel} is missing"
            elif file.stat().st_size != size:
                problem = f"{rel} has {file.stat().st_size} bytes, {size} when it was written"
        for rel in required:
            if problem:
                break
            if not (folder / rel).is_file():
                problem = f"{rel} is missing"
            elif rel not in files and (folder / rel).stat().st_size == 0:
                problem = f"{rel} is empty"
        if problem:
            place = self.link_places.get(name)
            if place is not None:
                raise TicketlabError(
                    f"step {place} (stored in {folder}) is damaged: {problem}; redo it with --redo and "
                    f"its place in the grid's folder, or delete {folder}"
                )
            raise TicketlabError(
                f"step {name} in {self.root} is damaged: {problem}; redo it with --redo {name} "
                f"(or delete {folder})"
            )

    @_follows_links
    def redo(self, name: str) -> bool:
        """Remove the finished step ``name`` so the next run computes it again (refused while a
        live process holds it). Returns whether there was anything to remove."""
        with self._locked():
            owner = self.owner_of(name)
            if owner is not None and not owner.is_stale():
                raise TicketlabError(f"cannot redo step {name}: {owner.describe()} is computing it now")
            # Partial work of a resumable step goes too: a redo starts from nothing.
            partial = self.partial_path(name)
            had_partial = partial.is_dir()
            shutil.rmtree(partial, ignore_errors=True)
            folder = self.path(name)
            if not folder.exists():
                return had_partial
            # Renamed away first: the step disappears in one move, then the files go.
            trash = self._tmp_path(name, f"redo-{uuid.uuid4().hex[:8]}")
            os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- running a step ------------------------------------------------------------------------
    @_follows_links
    def run(
        self,
        name: str,
        body: Callable[[Path], T],
        *,
        load: Callable[[Path], T] | None = None,
        required: Iterable[str] = (),
        wait: bool = True,
        adopt: Callable[[Path], bool] | None = None,
        resumable: bool = False,
    ) -> T | None:
        """Compute step ``name`` with ``body(tmp_dir)`` unless it is finished; publish it.

        A finished step is verified and skipped (``load(step_dir)`` gives its result back when
        given). A step another live process holds is waited for (or ``StepBusy`` is raised when
        ``wait`` is False). ``required`` names the files the step must hold: publishing without
        one is an error, and a finished step without one is reported as damaged. ``adopt(folder)``
        tells a finished folder written before the step protocol (no ``DONE``) from a half-written
        one: an adopted folder gets its marker and counts as finished. ``resumable``: the body
        checkpoints itself, so its folder outlives a failure or a dead owner as
        ``.<name>.partial`` and the next claimer's ``tmp_dir`` starts with its files.
        """
        required = tuple(required)
        if rank_and_world()[1] > 1:
            return self._run_on_ranks(name, body, load, required, adopt, resumable)
        while True:
            claim = self._claim_unless_done(
                name, wait, lambda: self._folder_done(name, adopt), resumable=resumable
            )
            if claim is None:
                self.verify(name, required)
                return load(self.path(name)) if load else None
            published, result = self._compute(name, claim, body, required, resumable)
            if published:
                return result
            # Our lease ran out and another process took the step over: its result stands.
            log.warning("step %s was taken over while this process computed it; using its result", name)

    def _run_on_ranks(
        self,
        name: str,
        body: Callable[[Path], T],
        load: Callable[[Path], T] | None,
        required: tuple[str, ...],
        adopt: Callable[[Path], bool] | None,
        resumable: bool = False,
    ) -> T | None:
        """A folder step under a multi-process launch (``_on_ranks``). (A resumable step's
        partial work goes to the first rank's folder: the body sends what it resumes from to the
        others.)"""

        def finished() -> T | None:
            self.verify(name, required)
            return load(self.path(name)) if load else None

        return self._on_ranks(
            name,
            claim=lambda: self._claim_unless_done(
                name, True, lambda: self._folder_done(name, adopt), resumable=resumable
            ),
            compute=lambda claim: self._compute(name, claim, body, required, resumable),
            private=body,
            finished=finished,
        )

    def _on_ranks(
        self,
        name: str,
        *,
        claim: Callable[[], _Claim | None],
        compute: Callable[[_Claim], tuple[bool, T | None]],
        private: Callable[[Path], T],
        finished: Callable[[], T | None],
    ) -> T | None:
        """A step under a multi-process launch: every rank runs the body (they train together,
        and a body may hold collective operations), but only the first claims, writes and
        publishes; the others run ``private(folder)`` in private folders that are thrown away,
        and learn from the first whether the step was done or published."""
        rank, _ = rank_and_world()
        while True:
            ours = claim() if rank == 0 else None
            if not broadcast_from_first(ours is not None):
                return finished()
            published = False
            if ours is not None:
                published, result = compute(ours)
            else:
                folder = self.root / f".{name}.rank{rank}-{uuid.uuid4().hex[:8]}.tmp"
                folder.mkdir(parents=True)
                _write_owner_note(folder, Owner.me(self.lease_seconds))
                try:
                    result = private(folder)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            # Also the barrier: no rank reads the step before the first has published it.
            if broadcast_from_first(ours is not None and published):
                return result
            log.warning("step %s was taken over while this job computed it; using its result", name)

    @_follows_links
    def run_file(
        self,
        name: str,
        body: Callable[[Path], T],
        *,
        load: Callable[[Path], T] | None = None,
        wait: bool = True,
    ) -> T | None:
        """A step whose output is one file ``name`` (a mask, a JSON record) rather than a folder:
        ``body(tmp_file)`` writes it, and it is renamed into place. Claimed like any step, so two
        processes never compute the same file at once; under a multi-process launch, as ``run``
        (every rank runs the body, the first publishes)."""
        final = self.path(name)
        if rank_and_world()[1] > 1:
            return self._on_ranks(
                name,
                claim=lambda: self._claim_unless_done(name, True, final.is_file),
                compute=lambda claim: self._compute_file(name, claim, body),
                private=lambda folder: body(folder / final.name),
                finished=lambda: load(final) if load else None,
            )
        while True:
            claim = self._claim_unless_done(name, wait, final.is_file)
            if claim is None:
                return load(final) if load else None
            published, result = self._compute_file(name, claim, body)
            if published:
                return result
            log.warning("step %s was taken over while this process computed it; using its result", name)

    def _compute_file(self, name: str, claim: _Claim, body: Callable[[Path], T]) -> tuple[bool, T | None]:
        """Run ``body`` on a file in the claim's temporary folder and rename the file into
        place; (published, result)."""
        final = self.path(name)
        tmp = self._tmp_path(name, claim.owner.token)
        published = False
        tmp.mkdir(parents=True, exist_ok=True)
        _write_owner_note(tmp, claim.owner)
        claim.start_heartbeat()
        try:
            result = body(tmp / final.name)
            if not (tmp / final.name).is_file():
                raise TicketlabError(f"step {name} finished without writing its file (not published)")
            with self._locked():
                owner = self.owner_of(name)
                if owner is not None and owner.token == claim.owner.token:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / final.name, final)
                    self._claim_path(name).unlink(missing_ok=True)
                    claim.released = published = True
        finally:
            claim.stop_heartbeat()
            shutil.rmtree(tmp, ignore_errors=True)
            claim.release()
        return published, result

    def _folder_done(self, name: str, adopt: Callable[[Path], bool] | None) -> bool:
        if self.is_done(name):
            return True
        folder = self.path(name)
        if adopt is None or not folder.is_dir() or not adopt(folder):
            return False
        with self._locked():
            if not self.is_done(name):
                files = {
                    str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
                }
                manifest = {"format": MANIFEST_FORMAT, "files": files, "adopted": time.time()}
                atomic_write(folder / DONE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
        return True

    def _claim_unless_done(
        self, name: str, wait: bool, done: Callable[[], bool], *, resumable: bool = False
    ) -> _Claim | None:
        """Our claim on ``name``; None once it is finished (by anyone). Waits while a live process
        holds it (``StepBusy`` when ``wait`` is False)."""
        announced = False
        while True:
            if done():
                return None
            claim = self._try_claim(name, done, resumable)
            if claim is not None:
                return claim
            owner = self.owner_of(name)
            if owner is None:
                continue  # finished or released between our look and now: look again
            if not wait:
                raise StepBusy(name, owner)
            if not announced:
                log.info("waiting for step %s: %s is computing it", name, owner.describe())
                announced = True
            time.sleep(self.poll_seconds)

    def _try_claim(self, name: str, done: Callable[[], bool], resumable: bool = False) -> _Claim | None:
        """Our claim on ``name``, or None if a live process holds it or it is finished."""
        with self._locked():
            if done():
                return None
            claim_path = self._claim_path(name)
            owner = self.owner_of(name)
            if owner is not None:
                if not owner.is_stale():
                    return None
                log.warning("taking over step %s from %s (dead or lease expired)", name, owner.describe())
                claim_path.unlink(missing_ok=True)
            me = Owner.me(self.lease_seconds)
            try:
                fd = os.open(claim_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(me), handle)
            self._sweep(name, resumable)
        return _Claim(self, name, me)

    def _sweep(self, name: str, resumable: bool = False) -> None:
        """Remove temporary folders of ``name`` whose owners are dead (called holding the lock and
        a fresh claim): a killed process leaves its folder and nobody will ever publish it. A
        folder whose owner may still be alive elsewhere (only its lease expired) is left to it: it
        finds its claim gone when it tries to publish, and removes the folder itself. For a
        resumable step the most recently written of the dead folders (and an earlier partial) is
        kept as ``.<name>.partial``, the work the new claimer continues."""
        dead = [t for t in self.root.glob(f".{name}.*.tmp") if t.is_dir() and _tmp_owner_dead(t)]
        partial = self.partial_path(name)
        # Work worth continuing is a claimer's own folder (with its owner note), not the private
        # folder of a further rank of a launch nor a redo's trash.
        work = [t for t in dead if (t / _OWNER_NOTE).is_file() and not t.name.startswith(f".{name}.rank")]
        if resumable and work:
            newest = max([*work, *([partial] if partial.is_dir() else [])], key=_last_written)
            if newest != partial:
                shutil.rmtree(partial, ignore_errors=True)
                os.replace(newest, partial)
                (partial / _OWNER_NOTE).unlink(missing_ok=True)
                dead.remove(newest)
        for tmp in dead:
            shutil.rmtree(tmp, ignore_errors=True)

    def _compute(
        self,
        name: str,
        claim: _Claim,
        body: Callable[[Path], T],
        required: tuple[str, ...],
        resumable: bool = False,
    ) -> tuple[bool, T | None]:
        """Run ``body`` in the claim's temporary folder and publish it; (published, result)."""
        tmp = self._tmp_path(name, claim.owner.token)
        if tmp.exists():
            shutil.rmtree(tmp)
        partial = self.partial_path(name)
        if resumable and partial.is_dir():
            os.replace(partial, tmp)  # ours now: the claim is held, nobody else touches it
        else:
            tmp.mkdir(parents=True)
        _write_owner_note(tmp, claim.owner)
        claim.start_heartbeat()
        published = False
        try:
            result = body(tmp)
            missing = [rel for rel in required if not (tmp / rel).is_file()]
            if missing:
                raise TicketlabError(f"step {name} finished without {', '.join(missing)} (not published)")
            published = self._publish(name, claim, tmp)
        except BaseException as error:
            if resumable:
                # Work in progress (its checkpoint) is kept for the next claimer, whatever stopped it.
                with contextlib.suppress(OSError):
                    (tmp / _OWNER_NOTE).unlink(missing_ok=True)
                    shutil.rmtree(partial, ignore_errors=True)
                    os.replace(tmp, partial)
                raise
            if not isinstance(error, Exception):
                raise  # an interrupted step keeps nothing
            # A step that failed (NaN loss, a bad input) keeps what it wrote, its log above all, in
            # .<name>.failed (the latest failure only).
            failed = self.failed_path(name)
            shutil.rmtree(failed, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.replace(tmp, failed)
            raise
        finally:
            claim.stop_heartbeat()
            if not published:
                shutil.rmtree(tmp, ignore_errors=True)
                claim.release()
        return published, result if published else None

    @_follows_links
    def failed_path(self, name: str) -> Path:
        """Where the files of the latest failed attempt at step ``name`` are kept."""
        return self.root / f".{name}.failed"

    def partial_path(self, name: str) -> Path:
        """Where a resumable step's work in progress waits for its next claimer."""
        return self.root / f".{name}.partial"

    def adopt_partial(self, name: str, files: Mapping[str, str | os.PathLike]) -> bool:
        """Move ``files`` ({name in the step: path}; work of a resumable step kept outside the
        protocol, e.g. by an older ticketlab) into ``.<name>.partial`` so the next claimer
        continues from them; done holding the claim, so nobody computes the step meanwhile.
        Returns whether anything moved."""
        files = {rel: Path(f) for rel, f in files.items() if Path(f).is_file()}
        if not files:
            return False
        claim = self._claim_unless_done(name, True, lambda: self.is_done(name), resumable=True)
        if claim is None:
            return False
        try:
            partial = self.partial_path(name)
            partial.mkdir(parents=True, exist_ok=True)
            for rel, file in files.items():
                os.replace(file, partial / rel)
        finally:
            claim.release()
        return True

    def _publish(self, name: str, claim: _Claim, tmp: Path) -> bool:
        (tmp / _OWNER_NOTE).unlink(missing_ok=True)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": MANIFEST_FORMAT, "files": files, "published_by": asdict(claim.owner)}
        (tmp / DONE).write_text(json.dumps(manifest, indent=1) + "\n")
        with self._locked():
            owner = self.owner_of(name)
            if owner is None or owner.token != claim.owner.token:
                return False
            final = self.path(name)
            if final.exists():  # a folder without DONE, from before claims (a legacy leftover)
                shutil.rmtree(final)
            os.rename(tmp, final)
            self._claim_path(name).unlink(missing_ok=True)
            claim.released = True
        return True


# A note inside each temporary folder naming its owner, so a sweep can tell whether it is dead.
_OWNER_NOTE = ".owner.json"


def _write_owner_note(tmp: Path, owner: Owner) -> None:
    (tmp / _OWNER_NOTE).write_text(json.dumps(asdict(owner)))


def _last_written(folder: Path) -> float:
    """When anything in ``folder`` was last written (the folder's own time when empty)."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*") if p.is_file())])


def _tmp_owner_dead(tmp: Path) -> bool:
    try:
        owner = Owner(**json.loads((tmp / _OWNER_NOTE).read_text()))
    except FileNotFoundError:
        # No note: a folder from before the note was written, or one killed before it: judge by age.
        return time.time() - tmp.stat().st_mtime > DEFAULT_LEASE_SECONDS
    except (OSError, ValueError, TypeError):
        return True
    return owner.on_this_machine() and not _pid_alive(owner.pid)


class _Claim:
    """A claim this process holds, with the thread that renews its lease."""

    def __init__(self, store: StepStore, name: str, owner: Owner):
        self.store = store
        self.name = name
        self.owner = owner
        self.released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        interval = self.store.lease_seconds / 4
        while not self._stop.wait(interval):
            with self.store._locked():
                current = self.store.owner_of(self.name)
                if current is None or current.token != self.owner.token:
                    log.warning("lost the claim on step %s (taken over)", self.name)
                    return
                self.owner = self.owner.renewed(self.store.lease_seconds)
                atomic_write(
                    self.store._claim_path(self.name),
                    lambda tmp: Path(tmp).write_text(json.dumps(asdict(self.owner))),
                )

    def release(self) -> None:
        if self.released:
            return
        with self.store._locked():
            current = self.store.owner_of(self.name)
            if current is not None and current.token == self.owner.token:
                self.store._claim_path(self.name).unlink(missing_ok=True)
        self.released = True
