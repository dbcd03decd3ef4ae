"""``make test-reliability``: crashes, hot swaps, a soak and hostile inputs, on real processes.

Every scenario runs the real thing: ``recflow serve`` (uvicorn on 127.0.0.1) in its own
process group, the nightly flow with Prefect's ephemeral API (``PREFECT_HOME`` in a temporary
directory, telemetry off), DuckDB warehouses and bundles on disk, all under one temporary
``RECFLOW_HOME`` built from a tiny CSV catalogue (``benchmarks/tiny_catalogue.py``). Crashes
are ``SIGKILL`` of the whole process group, as an OOM kill or a pulled plug would end them.

Scenarios (``--only`` picks some):

* ``hostile-inputs`` — the regression tests of the hostile-input fixes (feeds, CSV rows,
  sources, long lines, bundle files, Prefect's home, event labels, and every
  ``tests/test_*hardening*.py`` / ``tests/test_*provenance*.py`` present when it runs), as one
  pytest run: passed / failed counts.
* ``kill9-service-under-interact`` — concurrent ``POST /interact`` while the service is
  killed ``--kills`` times and restarted; every event id the service acknowledged with a 200
  must be in the event log afterwards (read with ``serving.events.read_events``).
* ``hot-swap-under-load`` — ``--swaps`` new bundles published (copied and committed through
  ``ArtifactStore``, which moves ``CURRENT``) while clients hammer ``GET /recommend``; every
  swap must be picked up and no request may fail (non-2xx or connection error).
* ``kill9-nightly-each-stage`` — the nightly killed as each stage's log line appears (Prefect
  start-up, flow start, load, event ingestion, k-core, split, train, after publish), new rows
  added before each run so every run has something to publish; after each kill ``CURRENT``
  (if any) must verify and load with ``serving.bundle.load_bundle``, and an uninterrupted
  nightly afterwards must complete with a loadable live bundle. ``--nightly-stages`` kills at
  some stages only (CI: the ones that write the bundle).
* ``soak`` — ``--soak-rate`` req/s on a fixed schedule (``/recommend`` for known users, some
  with a session, and ``POST /interact`` into those sessions) for ``--soak-seconds``; the
  server's resident memory is sampled every few seconds. Passes when no request failed and
  the RSS at the end is within 10 % of the RSS after warm-up (the first 60 s, or 10 % of a
  shorter run).

Prints one line per scenario (name, PASS/FAIL, its figure), writes the details as JSON to
``--out`` and exits 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.bench_serve import exchange, free_port, wait_ready
from benchmarks.tiny_catalogue import CATALOGUE, write_config, write_tiny_catalogue
from serving.events import read_events
from storage.artifacts import ArtifactStore
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = (
    "hostile-inputs",
    "kill9-service-under-interact",
    "hot-swap-under-load",
    "kill9-nightly-each-stage",
    "soak",
)
HOSTILE_TESTS = [
    "tests/test_hostile_feeds.py",  # redirects, internal addresses, entities, markup, one bad feed
    "tests/test_load.py",  # broken rows, unholdable timestamps, duplicated lines
    "tests/test_sources.py",
    "tests/test_long_lines.py",  # an over-long CSV line, by its true number
    "tests/test_artifacts.py",  # bundle permissions, fsync before rename, staging leftovers
    "tests/test_prefect_home.py",  # runs outside the checkout
    "tests/test_event_labels.py",  # a skip never trains nor becomes a target
]
HOSTILE_GLOBS = ["tests/test_*hardening*.py", "tests/test_*provenance*.py"]
NIGHTLY_STAGES: list[tuple[str, str]] = [
    ("prefect-start", "Starting temporary server"),
    ("flow-start", "Beginning flow run"),
    ("load", "Task run 'load-and-validate"),
    ("ingest-events", "Task run 'ingest-event-log"),
    ("k-core", "Task run 'k-core"),
    ("split", "Task run 'split"),
    ("train", "Task run 'train-evaluate-publish"),
    ("after-publish", "written; live bundle is"),
]
"""Where the nightly is killed: as the first log line containing the marker appears."""
RSS_TOLERANCE = 0.10
CLI = [sys.executable, "-m", "deployments.cli"]
"""``recflow`` as this interpreter runs it, so the checkout's code is what runs."""


@dataclass
class Outcome:
    """One scenario's verdict, its one-line figure and the numbers behind it."""

    name: str
    passed: bool
    figure: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


# The world: a catalogue, a RECFLOW_HOME, a PREFECT_HOME ----------------------------------------
class World:
    """A temporary directory holding the tiny catalogue, its ``recflow.toml``, ``RECFLOW_HOME``
    and ``PREFECT_HOME``; runs the nightly and the service on it as subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.interactions, self.items = write_tiny_catalogue(root)
        self.config = write_config(root, self.interactions, self.items)
        self.home = root / "home"
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self._appended = 0

    @property
    def env(self) -> dict[str, str]:
        """This process's environment minus anything naming another recflow or Prefect, plus
        this world's: telemetry off, models offline, text embedding off (the harness tests
        crashes and load, not the encoder), a fast reload check."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECFLOW_", "PREFECT_"))}
        return env | {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "RECFLOW_CONFIG": str(self.config),
            "RECFLOW_HOME": str(self.home),
            "RECFLOW_EMBEDDING__ENABLED": "false",
            "RECFLOW_SERVING__RELOAD_CHECK_S": "0.2",
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home / CATALOGUE / "bundles")

    @property
    def events_dir(self) -> Path:
        return Settings(home=self.home, catalogue=CATALOGUE).events_dir

    def users(self) -> list[str]:
        return sorted({line.split(",")[0] for line in self.interactions.read_text().splitlines()[1:]})

    def item_ids(self) -> list[str]:
        return [line.split(",")[0] for line in self.items.read_text().splitlines()[1:]]

    def add_interactions(self, n: int = 5) -> None:
        """Append ``n`` new rows (later timestamps), so the next nightly has new data to publish."""
        rng = random.Random(self._appended)
        stamp = 900_000_000 + self._appended
        rows = [
            f"{rng.randint(1, 36)},{rng.randint(1, 24)},{rng.choice([4, 5])},{stamp + i}" for i in range(n)
        ]
        self._appended += n
        with self.interactions.open("a") as fh:
            fh.write("\n".join(rows) + "\n")

    def start_nightly(self) -> subprocess.Popen[str]:
        """``recflow run nightly`` in its own process group, stdout and stderr merged into a pipe."""
        return subprocess.Popen(
            [*CLI, "run", "nightly"],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def nightly(self, timeout: float = 600) -> tuple[int, str]:
        """Run the nightly to the end; its exit status and output."""
        done = subprocess.run(
            [*CLI, "run", "nightly"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def serve(self, port: int, name: str) -> subprocess.Popen[bytes]:
        """``recflow serve`` on 127.0.0.1:``port`` in its own process group; output to a log file
        (a pipe nobody reads would fill and stall the server)."""
        log = (self.logs / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()


def kill9(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process's whole group (its workers, Prefect's temporary server) and reap it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the group, SIGKILL it if it has not gone in 20 s."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        kill9(proc)


@contextmanager
def service(world: World, name: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = world.serve(port, name)
    try:
        wait_ready(port, "/health", timeout=180)
        yield port, proc
    finally:
        stop(proc)


def loadable(world: World) -> tuple[bool, str]:
    """Whether ``CURRENT`` is absent, or names a bundle that verifies and loads."""
    from serving.bundle import load_bundle

    store = world.store
    try:
        version = store.current_version()
    except OSError as exc:
        return False, f"CURRENT unreadable: {exc}"
    if version is None:
        return True, "no CURRENT yet"
    try:
        store.verify(version)
        load_bundle(store, version)
    except Exception as exc:  # any failure to load is the finding
        return False, f"{version}: {type(exc).__name__}: {exc}"
    return True, version


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# Scenarios ---------------------------------------------------------------------------------
def hostile_inputs(args: argparse.Namespace) -> Outcome:
    """The hostile-input regression tests as one pytest run; files globbed now, so fixes
    merged later are picked up without editing this list."""
    files = list(HOSTILE_TESTS)
    for pattern in HOSTILE_GLOBS:
        files += sorted(p for p in glob.glob(pattern, root_dir=REPO) if p not in files)
    files = [f for f in files if (REPO / f).is_file()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECFLOW_")}
    env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    passed, failed = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
    failed += counts.get("errors", 0)
    ok = done.returncode == 0 and passed > 0
    details: dict[str, Any] = {"files": files, "counts": counts, "summary": summary}
    if not ok:
        details["output_tail"] = done.stdout[-4000:] + done.stderr[-2000:]
    return Outcome(
        "hostile-inputs", ok, f"{passed:,} passed / {failed} failed ({len(files)} files)", details=details
    )


class InteractClients:
    """``threads`` clients posting ``/interact`` in a loop; each keeps the ids acknowledged with
    a 200. Connection errors while the service is down are expected and only counted."""

    def __init__(self, port: int, items: list[str], threads: int = 8) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.items = items
        self.acknowledged: list[str] = []
        self.attempts = 0
        self.refused = 0
        self.non_200: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _run(self, t: int) -> None:
        n = 0
        client = httpx.Client(base_url=self.url, timeout=10)
        while not self._stop.is_set():
            item = self.items[(t * 7 + n) % len(self.items)]
            body = {"item_id": item, "event": "click", "session": f"k9-{t}"}
            n += 1
            try:
                response = client.post("/interact", json=body)
            except httpx.TransportError:
                with self._lock:
                    self.attempts += 1
                    self.refused += 1
                # The kept-alive connection died with the server: start afresh.
                client.close()
                client = httpx.Client(base_url=self.url, timeout=10)
                time.sleep(0.02)
                continue
            with self._lock:
                self.attempts += 1
                if response.status_code == 200:
                    self.acknowledged.append(str(response.json()["event_id"]))
                else:
                    self.non_200[response.status_code] = self.non_200.get(response.status_code, 0) + 1
        client.close()

    def __enter__(self) -> InteractClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def acked(self) -> int:
        with self._lock:
            return len(self.acknowledged)


def kill9_service(world: World, args: argparse.Namespace) -> Outcome:
    """Kill -9 the service ``args.kills`` times under ``/interact`` load; count acknowledged
    events missing from the log."""
    port = free_port()
    proc = world.serve(port, "kill9-service")
    wait_ready(port, "/health", timeout=180)
    before = {e.event_id for e in read_events(world.events_dir)} if world.events_dir.exists() else set()
    kills = 0
    acked_at_kill: list[int] = []
    try:
        with InteractClients(port, world.item_ids()) as clients:
            for _ in range(args.kills):
                start = clients.acked()
                deadline = time.monotonic() + 60
                while clients.acked() - start < args.events_between_kills and time.monotonic() < deadline:
                    time.sleep(0.05)
                kill9(proc)
                kills += 1
                acked_at_kill.append(clients.acked())
                proc = world.serve(port, "kill9-service")
                wait_ready(port, "/health", timeout=180)
            start = clients.acked()
            deadline = time.monotonic() + 60
            while clients.acked() - start < args.events_between_kills and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop(proc)
    logged_list = [e.event_id for e in read_events(world.events_dir) if e.event_id not in before]
    logged = set(logged_list)
    acknowledged = set(clients.acknowledged)
    lost = acknowledged - logged
    duplicated = len(logged_list) - len(logged)
    ok = (
        not lost and kills == args.kills and len(acknowledged) > 0 and duplicated == 0 and not clients.non_200
    )
    figure = f"acknowledged {len(acknowledged):,} / lost {len(lost)} ({kills} kills)"
    if duplicated or clients.non_200:
        figure += f"; duplicated {duplicated}, non-200 {clients.non_200}"
    return Outcome(
        "kill9-service-under-interact",
        ok,
        figure,
        details={
            "kills": kills,
            "acknowledged": len(acknowledged),
            "lost": sorted(lost)[:20],
            "lost_count": len(lost),
            "logged": len(logged),
            "logged_unacknowledged": len(logged - acknowledged),
            "duplicated_in_log": duplicated,
            "attempts": clients.attempts,
            "connection_errors_while_down": clients.refused,
            "non_200": clients.non_200,
            "acknowledged_at_each_kill": acked_at_kill,
        },
    )


class RecommendClients:
    """``threads`` closed-loop clients on ``GET /recommend/{user}``, keep-alive connections;
    every non-2xx answer and every transport error is a failure."""

    def __init__(self, port: int, users: list[str], threads: int = 4) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.users = users
        self.ok = 0
        self.failed: list[str] = []
        self.versions: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _run(self, t: int) -> None:
        n = t * 11
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                user = self.users[n % len(self.users)]
                n += 1
                try:
                    response = client.get(f"/recommend/{user}", params={"k": 5})
                except httpx.TransportError as exc:
                    with self._lock:
                        self.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    if 200 <= response.status_code < 300:
                        self.ok += 1
                        version = response.json().get("bundle_version")
                        if version:
                            self.versions.add(str(version))
                    else:
                        self.failed.append(f"{response.status_code}: {response.text[:200]}")

    def __enter__(self) -> RecommendClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def republish(world: World, tag: int) -> str:
    """A new bundle: the live one's files copied into staging and committed through the store
    (checksummed, renamed into place, ``CURRENT`` moved), as a nightly's publish does."""
    store = world.store
    live = store.current_path()
    assert live is not None, "no live bundle to copy"
    manifest = json.loads((live / "manifest.json").read_text())
    for key in ("version", "created", "checksums"):
        manifest.pop(key, None)
    manifest["reliability_swap"] = tag
    with store.staging() as staged:
        for path in live.iterdir():
            if path.name == "manifest.json":
                continue
            target = staged / path.name
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                shutil.copy2(path, target)
        return str(store.commit(staged, manifest))


def hot_swap(world: World, args: argparse.Namespace) -> Outcome:
    """Publish ``args.swaps`` bundles while clients hammer ``/recommend``: failed requests 0."""
    swaps: list[dict[str, Any]] = []
    with service(world, "hot-swap") as (port, _proc), RecommendClients(port, world.users()) as clients:
        time.sleep(1.0)
        for i in range(args.swaps):
            version = republish(world, i)
            started = time.monotonic()
            seen = False
            while time.monotonic() - started < 30:
                with suppress(httpx.TransportError):
                    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
                    if health.get("bundle_version") == version:
                        seen = True
                        break
                time.sleep(0.05)
            swaps.append(
                {"version": version, "served": seen, "after_s": round(time.monotonic() - started, 2)}
            )
            time.sleep(1.0)  # load on the new bundle before the next swap
    picked_up = sum(s["served"] for s in swaps)
    total = clients.ok + len(clients.failed)
    ok = not clients.failed and picked_up == args.swaps and clients.ok > 0
    return Outcome(
        "hot-swap-under-load",
        ok,
        f"{total:,} requests / failed {len(clients.failed)} ({picked_up} of {args.swaps} swaps served)",
        details={
            "requests": total,
            "failed": len(clients.failed),
            "failures": clients.failed[:20],
            "swaps": swaps,
            "versions_answered": sorted(clients.versions),
        },
    )


def kill9_nightly(world: World, stages: list[str] | None = None) -> Outcome:
    """Kill the nightly (its process group, Prefect's temporary server included) as each
    stage's log line appears (``stages``: some of them, in the nightly's order; None: all);
    the live bundle (``CURRENT``) must load after every kill, and a full run must follow. New
    rows before each run give every run something to publish."""
    chosen = [(stage, marker) for stage, marker in NIGHTLY_STAGES if stages is None or stage in stages]
    kills: list[dict[str, Any]] = []
    for stage, marker in chosen:
        world.add_interactions()
        log = world.logs / f"nightly-{stage}.log"
        proc = world.start_nightly()
        assert proc.stdout is not None
        hit = False
        with log.open("w") as out:
            for line in proc.stdout:
                out.write(line)
                if marker in line:
                    hit = proc.poll() is None
                    kill9(proc)
                    break
            else:
                proc.wait(30)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        good, what = loadable(world)
        kills.append({"stage": stage, "killed_alive": hit, "current_loadable": good, "current": what})
    world.add_interactions()
    started = time.monotonic()
    rc, output = world.nightly()
    (world.logs / "nightly-final.log").write_text(output)
    final_s = round(time.monotonic() - started, 1)
    good, what = loadable(world)
    completed = rc == 0 and "live bundle:" in output
    killed = sum(k["killed_alive"] for k in kills)
    loaded = sum(k["current_loadable"] for k in kills)
    ok = killed == len(chosen) and loaded == len(kills) and completed and good
    verdict = next((line for line in output.splitlines() if line.startswith("published:")), "")
    figure = (
        f"{killed} kills, one per stage: CURRENT loadable {loaded}/{len(kills)}; "
        f"next run {'completed' if completed else 'FAILED'} ({final_s:g} s)"
    )
    details: dict[str, Any] = {
        "kills": kills,
        "final_rc": rc,
        "final_s": final_s,
        "final_verdict": verdict,
        "final_current": what,
    }
    if not completed:
        details["final_output_tail"] = output[-4000:]
    return Outcome("kill9-nightly-each-stage", ok, figure, details=details)


def soak_requests(world: World, sessions: int = 50, n: int = 4000, seed: int = 0) -> list[bytes]:
    """Pre-built HTTP/1.1 requests: 70 % ``/recommend`` for a known user, 15 % the same with a
    session, 15 % ``POST /interact`` into one of ``sessions`` sessions."""
    rng = random.Random(seed)
    users, items = world.users(), world.item_ids()
    out: list[bytes] = []
    for _ in range(n):
        roll = rng.random()
        user = rng.choice(users)
        if roll < 0.70:
            path = f"/recommend/{user}?k=10"
        elif roll < 0.85:
            path = f"/recommend/{user}?k=10&session=soak-{rng.randrange(sessions)}"
        else:
            body = json.dumps(
                {
                    "item_id": rng.choice(items),
                    "event": rng.choice(["click", "like", "skip"]),
                    "session": f"soak-{rng.randrange(sessions)}",
                }
            ).encode()
            out.append(
                b"POST /interact HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            continue
        out.append(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn workers), in bytes."""
    parent = psutil.Process(pid)
    total = 0
    for proc in [parent, *parent.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


async def fixed_rate(
    port: int,
    requests: list[bytes],
    rate: float,
    seconds: float,
    connections: int,
    on_tick: Callable[[float], None],
) -> tuple[list[float], list[str], int]:
    """Requests due at ``start + i / rate`` over at most ``connections`` keep-alive connections
    (wrk2-style, as ``bench_serve.rate_load``, with POSTs and failure accounting): latencies
    from the due time, failures (non-2xx, transport errors, 30 s time-outs) and requests sent.
    A connection that failed is replaced. ``on_tick`` is called about once a second."""
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    failures: list[str] = []
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(request: bytes, due: float) -> None:
        reader, writer = await free.get()
        try:
            status = await asyncio.wait_for(exchange(reader, writer, request), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            writer.close()
            try:
                free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
            except OSError as reconnect:
                failures.append(f"reconnect: {reconnect}"[:200])
            return
        free.put_nowait((reader, writer))
        if 200 <= status < 300:
            latencies.append(time.perf_counter() - due)
        else:
            failures.append(f"HTTP {status}")

    i = 0
    next_tick = start + 1.0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        now = time.perf_counter()
        if now >= next_tick:
            on_tick(now - start)
            next_tick += 1.0
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(requests[i % len(requests)], max(due, time.perf_counter())))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        i += 1
    await asyncio.gather(*in_flight)
    while not free.empty():
        free.get_nowait()[1].close()
    return latencies, failures, i


def soak(world: World, args: argparse.Namespace) -> Outcome:
    """``args.soak_rate`` req/s for ``args.soak_seconds``; RSS flat within 10 % after warm-up."""
    seconds = float(args.soak_seconds)
    warmup = min(60.0, 0.1 * seconds)
    samples: list[tuple[float, int]] = []
    with service(world, "soak") as (port, proc):
        last = [-1e9]

        def tick(elapsed: float) -> None:
            if elapsed - last[0] >= args.rss_every:
                last[0] = elapsed
                with suppress(psutil.NoSuchProcess):
                    samples.append((round(elapsed, 1), rss_bytes(proc.pid)))

        tick(0.0)
        requests = soak_requests(world)
        lat, failures, sent = asyncio.run(fixed_rate(port, requests, args.soak_rate, seconds, 32, tick))
        samples.append((round(seconds, 1), rss_bytes(proc.pid)))
    after_warmup = next((rss for t, rss in samples if t >= warmup), samples[-1][1])
    end = samples[-1][1]
    drift = (end - after_warmup) / after_warmup
    arr = np.asarray(lat) * 1e3 if lat else np.zeros(1)
    p50, p99 = float(np.percentile(arr, 50)), float(np.percentile(arr, 99))
    achieved = len(lat) / seconds
    ok = not failures and abs(drift) <= RSS_TOLERANCE and sent > 0
    mib = 1 << 20
    figure = (
        f"{sent:,} requests at {args.soak_rate:g} req/s for {seconds:g} s, failed {len(failures)}; "
        f"p50 {p50:.1f} ms p99 {p99:.1f} ms; RSS {after_warmup / mib:.0f} → {end / mib:.0f} MiB "
        f"({drift:+.1%})"
    )
    return Outcome(
        "soak",
        ok,
        figure,
        details={
            "offered_rps": args.soak_rate,
            "seconds": seconds,
            "warmup_s": warmup,
            "sent": sent,
            "answered_2xx": len(lat),
            "achieved_rps": round(achieved, 1),
            "failed": len(failures),
            "failures": failures[:20],
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(float(arr.max()), 2),
            "rss_after_warmup_bytes": after_warmup,
            "rss_end_bytes": end,
            "rss_drift": round(drift, 4),
            "rss_samples": samples,
        },
    )


# Driver -------------------------------------------------------------------------------------
def run_scenario(name: str, body: Callable[[], Outcome]) -> Outcome:
    """Run one scenario; an exception is that scenario's failure, not the harness's."""
    started = time.monotonic()
    try:
        outcome = body()
    except Exception as exc:  # the scenario's FAIL, with its cause
        outcome = Outcome(name, False, f"error: {type(exc).__name__}: {exc}"[:300])
    outcome.seconds = round(time.monotonic() - started, 1)
    mark = "PASS" if outcome.passed else "FAIL"
    print(f"{outcome.name:<30} {mark}  {outcome.figure}", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", nargs="+", action="extend", choices=SCENARIOS, help="run only these scenarios (repeatable)"
    )
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-rate", type=float, default=200.0, help="soak requests per second")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--kills", type=int, default=3, help="service kills under /interact load")
    parser.add_argument(
        "--events-between-kills", type=int, default=1000, help="acknowledged events before each kill"
    )
    parser.add_argument("--swaps", type=int, default=6, help="bundles published under /recommend load")
    parser.add_argument(
        "--nightly-stages",
        nargs="+",
        action="extend",
        choices=[stage for stage, _ in NIGHTLY_STAGES],
        help="kill the nightly at these stages only (default: every stage)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, homes)")
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "reliability.json")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or s in args.only]

    root = Path(tempfile.mkdtemp(prefix="recflow-reliability-"))
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        worlds: list[World] = []

        def world() -> World:
            """The shared world, its first bundle published by an uninterrupted nightly."""
            if not worlds:
                built = World(root / "world")
                rc, output = built.nightly()
                (built.logs / "nightly-setup.log").write_text(output)
                if rc != 0 or built.store.current_version() is None:
                    raise RuntimeError(f"the setup nightly failed (exit {rc}): {output[-2000:]}")
                worlds.append(built)
            return worlds[0]

        bodies: dict[str, Callable[[], Outcome]] = {
            "hostile-inputs": lambda: hostile_inputs(args),
            "kill9-service-under-interact": lambda: kill9_service(world(), args),
            "hot-swap-under-load": lambda: hot_swap(world(), args),
            "kill9-nightly-each-stage": lambda: kill9_nightly(world(), args.nightly_stages),
            "soak": lambda: soak(world(), args),
        }
        for name in chosen:
            outcomes.append(run_scenario(name, bodies[name]))
    finally:
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    failed = [o.name for o in outcomes if not o.passed]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} scenarios passed "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "passed": not failed,
                "scenarios": [asdict(o) for o in outcomes],
            },
            indent=2,
        )
    )
    print(f"written to {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
