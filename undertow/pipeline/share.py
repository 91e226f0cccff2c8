"""Shared delivery: one run's batches delivered by several workers at once.

With ``executor: {delivery_workers: N}`` (N > 1) a run executed by a worker (its
*coordinator*) extracts, diffs and plans as always, then splits the batches that have no
checkpoint into *parts* (``undertow_parts``: consecutive batch numbers) and queues N - 1
*helper* tasks. It maps part after part and stores each one's mapped batches in the state
store (``undertow_part_data``, compressed), which opens the part; then it delivers parts
itself, like the helpers. A worker takes a part by leasing it in the state store (one
compare-and-set on the part's ``attempts``), refreshes the lease every
``executor.heartbeat``, sends its batches under the account's shared rate budget, and
checkpoints each batch in a transaction fenced by the lease (a holder whose part was taken
over writes nothing more) that adds to the run's counters instead of writing them.

When every part is ``done`` (or one ``failed``) the coordinator folds the checkpoints into
the snapshot and ends the run, exactly as a run delivered by one process ends.

Crashes:

* a helper killed mid-part: its lease runs out after ``executor.lock_ttl`` (at once when
  its process is seen dead on the same host) and the coordinator or another helper takes the
  part over; it sends only the part's batches without a checkpoint, with the same
  idempotency keys, so only the batches in flight at the kill are sent twice (as for a run
  killed in one process: ``README``, "the in-flight caveat");
* the coordinator killed: its run task is resumed by another worker (the sweeper), which
  finds the parts planned, maps those still ``new``, queues helpers again and waits for the
  rest; the helpers go on with their parts meanwhile;
* SIGTERM (a worker's shutdown): the part is given back after its batches in flight are
  checkpointed; a coordinator's run stays ``delivering`` for the next worker.

Not shared (the run is delivered by its coordinator alone, as before): destinations that
declare ``shared_delivery=False`` (a local file), asynchronous job APIs (their jobs are
polled by the run that submitted them), events a vendor does not deduplicate (their
"being sent" marks are the run's), and syncs that spool sync logs on the coordinator's disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from undertow.destinations import capture
from undertow.destinations.base import Batch, Operation
from undertow.errors import LockLostError, UndertowError
from undertow.pipeline.deliver import DeliveryReport, Outcome, deliver
from undertow.pipeline.halt import POLL_SECONDS, Halt
from undertow.pipeline.record import Recorder, Work
from undertow.state.cluster import ClusterState, PartRow
from undertow.state.store import LOCK_TTL, RunRecord, StateStore

if TYPE_CHECKING:
    from undertow.pipeline.diff import DiffEngine, DiffSpec
    from undertow.pipeline.map import CompiledMapping
    from undertow.pipeline.run import SyncContext, SyncRun

log = logging.getLogger("undertow.share")

PARTS_PER_WORKER = 4
"""Parts per delivering worker: enough that a fast worker takes more of them and a kill
loses little, few enough that claiming costs nothing next to sending."""
MAX_BATCHES_PER_PART = 50
WAIT_SECONDS = 0.2
"""How often a worker with nothing to claim looks again (parts being mapped, or leased)."""


@dataclass
class Sharing:
    """How this run shares its delivery (set by the Project facade for worker runs)."""

    workers: int
    """Workers delivering together, the coordinator included (``delivery_workers``)."""
    owner: str
    """This process as a holder (``worker|host|pid``)."""
    ttl: timedelta
    heartbeat: float
    publish: Callable[[str, int, int], None]
    """Queue ``count`` helper tasks for run ``run_id`` (attempt ``attempt``)."""


def refusal(ctx: SyncContext, sync_run: SyncRun) -> str | None:
    """Why this run's delivery cannot be shared (None: it can)."""
    caps = ctx.caps
    if not caps.shared_delivery:
        return f"destination {ctx.destination_name!r} takes one writer at a time"
    if ctx.destination.async_jobs:
        return "its batches are asynchronous jobs, polled by the run that submitted them"
    if caps.at_most_once:
        return "its events are marked as being sent by the run that sends them"
    if sync_run.changelog_dir is not None:
        return "its sync logs are spooled on the coordinator's disk"
    return None


def resumed(sync_run: SyncRun, run: RunRecord) -> Sharing | None:
    """For a resumed run that split its delivery into parts: go on through the parts (with
    this run's own sharing, or alone), never around them: workers may still hold some."""
    if not ClusterState(sync_run.store).parts(run.id):
        return None
    if sync_run.sharing is not None:
        return sync_run.sharing
    who = sync_run.worker or "undertow"
    return Sharing(
        workers=1,
        owner=f"{who.split('|', 1)[0]}|{socket.gethostname()}|{os.getpid()}",
        ttl=sync_run.lock_ttl or LOCK_TTL,
        heartbeat=sync_run.heartbeat_seconds,
        publish=lambda _run, _attempt, _count: None,
    )


def plan_ranges(total: int, done: set[int], workers: int) -> list[tuple[int, int]]:
    """Consecutive ranges of the batches without a checkpoint, about ``PARTS_PER_WORKER``
    per worker (each at most ``MAX_BATCHES_PER_PART``)."""
    todo = [n for n in range(total) if n not in done]
    if not todo:
        return []
    per = -(-len(todo) // max(1, workers * PARTS_PER_WORKER))
    per = max(1, min(MAX_BATCHES_PER_PART, per))
    return [(todo[i], todo[min(i + per, len(todo)) - 1]) for i in range(0, len(todo), per)]


# -- a part's mapped batches, as stored ------------------------------------------------------


def encode(works: list[tuple[Work, Batch | None]]) -> bytes:
    """A part's batches as one compressed body: a JSON header (one entry per batch), then
    every payload on a line of its own (payloads are compact JSON: no raw newline)."""
    header = []
    lines: list[str] = []
    for work, batch in works:
        entry: dict[str, Any] = {
            "n": work.number,
            "op": str(work.operation),
            "size": work.size,
            "seqs": work.seqs,
            "keys": work.keys,
            "rej": work.map_rejected,
        }
        if batch is not None:
            if any("\n" in p for p in batch.payloads):
                entry["payloads"] = batch.payloads  # not compact JSON: kept in the header
            else:
                entry["p"] = len(batch.payloads)
                lines.extend(batch.payloads)
            entry["ids"] = batch.identifiers
        header.append(entry)
    raw = orjson.dumps(header) + b"\n" + "\n".join(lines).encode()
    return zlib.compress(raw, 1)


def decode(
    body: bytes, *, sync: str, run_id: str, object: str | None
) -> list[tuple[Work, Batch | None]]:
    raw = zlib.decompress(body)
    head, _, rest = raw.partition(b"\n")
    lines = rest.decode().split("\n") if rest else []
    at = 0
    out: list[tuple[Work, Batch | None]] = []
    for entry in orjson.loads(head):
        op = Operation(entry["op"])
        work = Work(
            number=int(entry["n"]),
            operation=op,
            size=int(entry["size"]),
            seqs=list(entry["seqs"]),
            keys=list(entry["keys"]),
            map_rejected=[(int(s), str(k), str(r)) for s, k, r in entry["rej"]],
        )
        batch = None
        if "ids" in entry:
            if "payloads" in entry:
                payloads = list(entry["payloads"])
            else:
                payloads = lines[at : at + int(entry["p"])]
                at += int(entry["p"])
            batch = Batch(
                sync=sync,
                operation=op,
                number=work.number,
                idempotency_key=f"{run_id}-{work.number}",
                keys=work.keys,
                payloads=payloads,
                identifiers=dict(entry["ids"]),
                object=object,
                run_id=run_id,
            )
        out.append((work, batch))
    return out


# -- leasing and delivering parts -------------------------------------------------------------


class _LeaseBeat:
    """Refresh the lease of the part being delivered; ``lost`` once it was taken over."""

    def __init__(self, cluster: ClusterState, seconds: float) -> None:
        self.cluster = cluster
        self.seconds = seconds
        self.part: PartRow | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="undertow-part-beat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            part = self.part
            if part is None:
                continue
            try:
                if not self.cluster.part_heartbeat(part):
                    self.lost.set()
            except Exception:  # the store blinked: the next beat tries again
                continue

    def __enter__(self) -> _LeaseBeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class PartsReport:
    """What one worker did in a shared delivery."""

    parts: list[int] = field(default_factory=list)
    """Parts this worker delivered to the end."""
    batches: int = 0
    stopped: UndertowError | None = None
    handed_back: bool = False


class PartDelivery:
    """Claims parts of run ``run`` and delivers them, until none is left to claim."""

    def __init__(
        self,
        ctx: SyncContext,
        store: StateStore,
        run: RunRecord,
        *,
        owner: str,
        ttl: timedelta,
        heartbeat: float,
        halt: Halt,
        open_keys: set[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.cluster = ClusterState(store)
        self.run = run
        self.owner = owner
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.halt = halt
        self.open_keys = open_keys if open_keys is not None else store.open_row_keys(ctx.name)
        self.report = PartsReport()

    def _wait_for_more(self, *, coordinator: bool) -> bool:
        """Nothing to claim now: whether to look again (parts still being mapped by a live
        coordinator, or, for the coordinator, parts leased by others)."""
        states = [p.state for p in self.cluster.parts(self.run.id)]
        if "failed" in states or all(s in ("done", "failed") for s in states):
            return False
        if coordinator:
            return True
        return "new" in states and self.ctx.name in self.store.held_locks()

    def run_all(self, *, coordinator: bool) -> PartsReport:
        return asyncio.run(self._session(coordinator=coordinator))

    async def _session(self, *, coordinator: bool) -> PartsReport:
        destination = self.ctx.destination
        await destination.open()
        try:
            with _LeaseBeat(self.cluster, self.heartbeat) as beat:
                while not self.halt.is_set():
                    if any(p.state == "failed" for p in self.cluster.parts(self.run.id)):
                        break  # a fatal error stopped the run: nothing more is sent
                    part = self.cluster.claim_part(
                        self.run.id, owner=self.owner, worker=self.owner, ttl=self.ttl
                    )
                    if part is None:
                        if not self._wait_for_more(coordinator=coordinator):
                            break
                        await asyncio.sleep(WAIT_SECONDS)
                        continue
                    beat.lost.clear()
                    beat.part = part
                    try:
                        await self._deliver_part(part, beat.lost)
                    finally:
                        beat.part = None
                    if self.report.stopped is not None:
                        break
        finally:
            await destination.close()
        return self.report

    async def _deliver_part(self, part: PartRow, lost: threading.Event) -> None:
        ctx = self.ctx
        works = decode(
            self.cluster.part_body(part),
            sync=ctx.name,
            run_id=self.run.id,
            object=ctx.sync.object,
        )
        done = self.store.done_batches(self.run.id)
        todo = [(w, b) for w, b in works if w.number not in done]
        recorder = Recorder(
            self.store,
            self.run,
            open_keys=self.open_keys,
            fence_with=lambda conn: self.cluster.fence_part(conn, part),
        )
        stop = asyncio.Event()
        pending: dict[int, Work] = {}
        checkpointed = 0

        async def batches() -> AsyncIterator[Batch]:
            nonlocal checkpointed
            for work, batch in todo:
                if stop.is_set():
                    return
                if batch is None:  # every row refused by the mapping: nothing to send
                    recorder.checkpoint(work, None, 0)
                    checkpointed += 1
                    continue
                pending[work.number] = work
                yield batch

        def on_outcome(outcome: Outcome) -> None:
            nonlocal checkpointed
            work = pending.pop(outcome.batch.number)
            recorder.checkpoint(work, outcome.result, outcome.attempts, outcome.note)
            checkpointed += 1

        async def watch() -> None:
            while not self.halt.is_set() and not lost.is_set():
                await asyncio.sleep(POLL_SECONDS)
            stop.set()

        watcher = asyncio.create_task(watch())
        report: DeliveryReport | None = None
        try:
            with capture.context(run_id=self.run.id), self.halt.delivery():
                report = await deliver(
                    ctx.destination,
                    batches(),
                    concurrency=ctx.caps.max_concurrency,
                    rate_limit=ctx.caps.rate_limit,
                    rate_limits=ctx.caps.rate_limits,
                    on_outcome=on_outcome,
                    stop=stop,
                    policy=ctx.retry,
                )
        except LockLostError:
            log.warning("part %s of run %s was taken over", part.part_no, self.run.id)
            return  # the new holder delivers the rest
        finally:
            watcher.cancel()
            self.report.batches += checkpointed
        if lost.is_set():
            return
        if report.stopped is not None:
            self.report.stopped = report.stopped
            self.cluster.finish_part(part, error=str(report.stopped))
        elif checkpointed == len(todo):
            self.cluster.finish_part(part)
            self.report.parts.append(part.part_no)
        else:  # halted (a shutdown): the batches in flight are checkpointed
            self.cluster.release_part(part)
            self.report.handed_back = True


def help_deliver(
    ctx: SyncContext,
    store: StateStore,
    run_id: str,
    *,
    owner: str,
    ttl: timedelta,
    heartbeat: float,
    halt: Halt,
) -> dict[str, Any]:
    """A helper task: deliver parts of ``run_id`` until none is left to claim."""
    run = store.get_run(run_id)
    if run is None or run.status.final:
        return {"run_id": run_id, "parts": [], "note": "the run is over"}
    delivery = PartDelivery(ctx, store, run, owner=owner, ttl=ttl, heartbeat=heartbeat, halt=halt)
    report = delivery.run_all(coordinator=False)
    out: dict[str, Any] = {"run_id": run_id, "parts": report.parts, "batches": report.batches}
    if report.stopped is not None:
        out["error"] = str(report.stopped)
    return out


# -- the coordinator --------------------------------------------------------------------------


def _map_parts(
    sync_run: SyncRun,
    cluster: ClusterState,
    run: RunRecord,
    engine: DiffEngine,
    mapping: CompiledMapping,
) -> None:
    """Map every ``new`` part and open it (the parts already open keep their data)."""
    parts = cluster.parts(run.id)
    new = [p for p in parts if p.state == "new"]
    if not new:
        return
    skip = sync_run.store.done_batches(run.id)
    for p in parts:
        if p.state != "new":
            skip.update(p.batches())
    owner = {n: p for p in new for n in p.batches()}
    collected: dict[int, list[tuple[Work, Batch | None]]] = {p.part_no: [] for p in new}
    left = {p.part_no: len([n for n in p.batches() if n not in skip]) for p in new}

    def flush(part_no: int) -> None:
        works = collected.pop(part_no)
        rows = sum(len(w.seqs) for w, _ in works)
        cluster.open_part(run.id, part_no, encode(works), batches=len(works), rows=rows)

    for p in new:
        if left[p.part_no] == 0:
            flush(p.part_no)
    source: Iterator[tuple[Work, Batch | None]] = sync_run._works(run, engine, mapping, skip)
    for work, batch in source:
        if sync_run.halt.is_set():
            return  # a shutdown: the parts not mapped stay new for the next coordinator
        part = owner.get(work.number)
        if part is None:
            continue
        collected[part.part_no].append((work, batch))
        left[part.part_no] -= 1
        if left[part.part_no] == 0:
            flush(part.part_no)
    for part_no in list(collected):
        flush(part_no)  # batches the plan no longer yields: the part holds what it has


def deliver_shared(
    sync_run: SyncRun,
    run: RunRecord,
    engine: DiffEngine,
    mapping: CompiledMapping,
    spec: DiffSpec,
    sharing: Sharing,
) -> RunRecord:
    """The coordinator's delivery (see the module docstring); ends the run as
    ``SyncRun._deliver_and_record`` does."""
    ctx = sync_run.ctx
    store = sync_run.store
    cluster = ClusterState(store)
    started = time.monotonic()
    ranges = plan_ranges(run.total_batches or 0, store.done_batches(run.id), sharing.workers)
    cluster.create_parts(run.id, ranges)
    sync_run.reporter.stage(ctx.name, "deliver", total=run.counts.get("planned", 0))
    try:
        if sharing.workers > 1:
            sharing.publish(run.id, run.attempt, sharing.workers - 1)
    except UndertowError as exc:  # the broker is down: this worker delivers alone
        log.warning("run %s: no helpers queued (%s); delivering alone", run.id, exc)
    _map_parts(sync_run, cluster, run, engine, mapping)
    delivery = PartDelivery(
        ctx,
        store,
        run,
        owner=sharing.owner,
        ttl=sharing.ttl,
        heartbeat=sharing.heartbeat,
        halt=sync_run.halt,
        open_keys=sync_run.open_keys,
    )
    report = delivery.run_all(coordinator=True)
    if sync_run.halt.lock_lost:
        raise LockLostError(
            f"sync {ctx.name!r}: this run's lock was taken over while it shared its delivery",
            hint="the process that took the lock resumes the run from its checkpoints",
        )
    parts = cluster.parts(run.id)
    failed = [p for p in parts if p.state == "failed"]
    fresh = store.get_run(run.id)
    if fresh is not None:
        run.counts = fresh.counts  # the helpers added to them in the store
    done = store.done_batches(run.id)
    engine.fold(run.id, spec, done, store.not_accepted_seqs(run.id))
    helpers = {p.owner for p in parts if p.owner and p.owner != sharing.owner}
    log.info(
        "run %s: %d part(s), %d delivered here, %d helper(s), %.1f s",
        run.id,
        len(parts),
        len(report.parts),
        len(helpers),
        time.monotonic() - started,
    )
    error: UndertowError | None = report.stopped
    if error is None and failed:
        error = UndertowError(
            f"part {failed[0].part_no} of the shared delivery stopped: {failed[0].error}",
            hint="the rows not sent stay undelivered; the next run sends them",
        )
    if sync_run.halt.is_set() and error is None and len(done) < (run.total_batches or 0):
        run.error = f"handed back ({sync_run.halt.reason}): {len(done)} of "
        run.error += f"{run.total_batches or 0} batches done"
        # the run stays delivering: the next worker resumes it
        sync_run._update(run, keep_counts=True)
        return run
    recorder = Recorder(store, run, open_keys=sync_run.open_keys)
    finished = sync_run._conclude(run, engine, recorder, done, error=error, cancelled=False)
    cluster.end_parts(run.id)
    return finished
