"""Bring the local stack up and down without Docker: Kafka, FerretDB, Jaeger and an SMTP sink.

    python deploy/local/stack.py up|down|status

Builds and downloads are cached outside the repository (``$FULFIL_CACHE``, default ``~/.cache/fulfil``) so a warm
start takes seconds; data, logs and pid files live in the git-ignored ``.local/`` folder of the repository.
"Up" returns only when every server answers; running it twice is harmless; "down" leaves no process behind.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATE = Path(os.environ.get("FULFIL_STATE_DIR", REPO / ".local"))
CACHE = Path(os.environ.get("FULFIL_CACHE", Path.home() / ".cache" / "fulfil"))
LOGS = STATE / "logs"
RUN = STATE / "run"
DATA = STATE / "data"

JAEGER_VERSION = "v1.76.0"  # Go module version; this is Jaeger 2.13
HOST = "127.0.0.1"


class StackError(RuntimeError):
    """A prerequisite is missing or a server did not come up; the message says which."""


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, what: str) -> None:
    log = LOGS / "build.log"
    LOGS.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StackError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


# ---------------------------------------------------------------- prerequisites


def _version_of(cmd: list[str], pattern: str) -> tuple[int, ...] | None:
    if shutil.which(cmd[0]) is None:
        return None
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(pattern, out.stdout + out.stderr)
    return tuple(int(x) for x in m.groups()) if m else None


def check_prerequisites() -> None:
    """Fail with a message naming every missing prerequisite."""
    missing = []
    java = _version_of(["java", "-version"], r'version "(\d+)')
    if java is None or java < (17,):
        missing.append(f"Java 17+ (found {java[0] if java else 'none'}): install openjdk-17-jre-headless")
    if shutil.which("mvn") is None:
        missing.append("Maven (mvn): install maven")
    go = _version_of(["go", "version"], r"go(\d+)\.(\d+)")
    if go is None or go < (1, 24):
        found = ".".join(map(str, go)) if go else "none"
        missing.append(f"Go >= 1.24 (found {found}): install a Go toolchain from go.dev or your distribution")
    if missing:
        raise StackError("missing prerequisites:\n  - " + "\n  - ".join(missing))


# ---------------------------------------------------------------- builds (cached outside the repo)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def kafka_libs() -> Path:
    pom = HERE / "kafka" / "pom.xml"
    libs = CACHE / "kafka" / f"libs-{_digest(pom)}"
    if not (libs / ".complete").exists():
        say(f"collecting Kafka jars from Maven Central into {libs} (first run only) ...")
        shutil.rmtree(libs, ignore_errors=True)
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            what="mvn dependency:copy-dependencies",
        )
        (libs / ".complete").touch()
    return libs


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env.setdefault("CGO_ENABLED", "0")
    return env


def ferretdb_binary() -> Path:
    src = HERE / "ferretdb"
    binary = CACHE / "bin" / f"ferretdb-{_digest(src / 'go.mod', src / 'go.sum', src / 'main.go')}"
    if not binary.exists():
        say("building FerretDB v1.24 (embedded, SQLite backend) with Go (first run only, ~2 min) ...")
        binary.parent.mkdir(parents=True, exist_ok=True)
        _run(["go", "build", "-o", str(binary), "."], cwd=src, env=_go_env(), what="go build ferretdb")
    return binary


def jaeger_binary() -> Path:
    binary = CACHE / "bin" / f"jaeger-{JAEGER_VERSION}"
    if binary.exists():
        return binary
    say(f"building Jaeger {JAEGER_VERSION} (Jaeger 2.13) with Go (first run only, ~10 min) ...")
    env = _go_env()
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"github.com/jaegertracing/jaeger@{JAEGER_VERSION}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    m = re.search(r'"Dir":\s*"([^"]+)"', out.stdout)
    if out.returncode != 0 or not m:
        raise StackError(f"go mod download jaeger failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    # `go install` refuses the module (it has replace directives); build inside a writable copy instead.
    src = CACHE / "src" / f"jaeger-{JAEGER_VERSION}"
    if not (src / "go.mod").exists():
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(m.group(1), src)
        for p in [src, *src.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    _run(["go", "build", "-o", str(tmp), "./cmd/jaeger"], cwd=src, env=env, what="go build jaeger")
    tmp.rename(binary)
    return binary


# ---------------------------------------------------------------- readiness probes


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def kafka_ready() -> bool:
    if not _port_open(9092):
        return False
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient  # venv dependency; the Makefile syncs it first

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:9092", request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()  # a metadata round trip
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


def mongo_ready() -> bool:
    if not _port_open(27017):
        return False
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(f"mongodb://{HOST}:27017", serverSelectionTimeoutMS=2000)
    try:
        return bool(client.admin.command("ping").get("ok"))
    except Exception:
        return False
    finally:
        client.close()


def jaeger_ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:16686/api/services", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def smtp_ready() -> bool:
    try:
        with socket.create_connection((HOST, 1025), timeout=2) as s:
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


# ---------------------------------------------------------------- processes


@dataclass
class Server:
    name: str
    ready: Callable[[], bool]
    command: Callable[[], list[str]]
    prepare: Callable[[], None] = lambda: None
    ports: list[int] = field(default_factory=list)
    timeout: float = 90.0

    @property
    def pidfile(self) -> Path:
        return RUN / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return LOGS / f"{self.name}.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _read_pid(server: Server) -> int | None:
    try:
        pid = int(server.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def start(server: Server) -> None:
    if server.ready():
        say(f"{server.name}: already up")
        return
    if (pid := _read_pid(server)) is None:
        blocked = [p for p in server.ports if _port_open(p)]
        if blocked:
            raise StackError(f"{server.name}: port(s) {blocked} on {HOST} are taken by another process")
        server.prepare()
        cmd = server.command()
        LOGS.mkdir(parents=True, exist_ok=True)
        RUN.mkdir(parents=True, exist_ok=True)
        with server.logfile.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                start_new_session=True,
            )
        server.pidfile.write_text(str(proc.pid))
        pid = proc.pid
        say(f"{server.name}: started (pid {pid}), waiting until it answers ...")
    deadline = time.monotonic() + server.timeout
    while time.monotonic() < deadline:
        if server.ready():
            say(f"{server.name}: up")
            return
        if not _pid_alive(pid):
            tail = "\n".join(server.logfile.read_text(errors="replace").splitlines()[-20:])
            raise StackError(f"{server.name} exited during start; last lines of {server.logfile}:\n{tail}")
        time.sleep(0.5)
    raise StackError(f"{server.name} did not answer within {server.timeout:.0f}s; see {server.logfile}")


def stop(server: Server) -> None:
    pid = _read_pid(server)
    if pid is None:
        server.pidfile.unlink(missing_ok=True)
        return
    say(f"{server.name}: stopping (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        say(f"{server.name}: did not stop in 20s, killing")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.1)
    server.pidfile.unlink(missing_ok=True)


# ---------------------------------------------------------------- the servers


def _kafka_prepare() -> None:
    libs = kafka_libs()
    data = DATA / "kafka"
    data.mkdir(parents=True, exist_ok=True)
    props = STATE / "kafka" / "server.properties"
    props.parent.mkdir(parents=True, exist_ok=True)
    props.write_text((HERE / "kafka" / "server.properties").read_text().replace("@DATA_DIR@", str(data)))
    cluster_file = STATE / "kafka" / "cluster-id"
    if not cluster_file.exists():
        cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
    # With controller.quorum.voters set, formatting takes no --standalone flag.
    _run(
        [
            *_java(libs),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_file.read_text().strip(),
            "-c",
            str(props),
            "--ignore-formatted",
        ],
        what="kafka storage format",
    )


def _java(libs: Path) -> list[str]:
    return [
        "java",
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={LOGS}",
        "-cp",
        f"{libs}/*",
    ]


SERVERS = [
    Server(
        name="kafka",
        ready=kafka_ready,
        prepare=_kafka_prepare,
        command=lambda: [*_java(kafka_libs()), "kafka.Kafka", str(STATE / "kafka" / "server.properties")],
        ports=[9092, 9093],
    ),
    Server(
        name="ferretdb",
        ready=mongo_ready,
        command=lambda: [str(ferretdb_binary()), "-listen", f"{HOST}:27017", "-data", str(DATA / "ferretdb")],
        ports=[27017],
    ),
    Server(
        name="jaeger",
        ready=jaeger_ready,
        command=lambda: [str(jaeger_binary()), "--config", str(HERE / "jaeger" / "config.yaml")],
        ports=[4317, 4318, 16686],
        timeout=60,
    ),
    Server(
        name="smtp-sink",
        ready=smtp_ready,
        command=lambda: [sys.executable, str(HERE / "smtp_sink.py"), "--data", str(DATA / "smtp")],
        ports=[1025, 8025],
        timeout=30,
    ),
]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


SERVICE_PORTS = {"order": 8080, "payment": 8081, "inventory": 8082, "shipping": 8083, "notify": 8084}


def _service(name: str, port: int) -> Server:
    return Server(
        name=name,
        ready=lambda: _http_ok(f"http://{HOST}:{port}/ready"),
        command=lambda: [sys.executable, "-m", f"services.{name}"],
        ports=[port],
        timeout=60,
    )


SERVICES = [_service(n, p) for n, p in SERVICE_PORTS.items()]


def _fulfil(*args: str) -> None:
    _run([sys.executable, "-m", "shared.cli", *args], what=f"fulfil {' '.join(args)}")


def services_up() -> None:
    t0 = time.monotonic()
    say("applying topics from deploy/topics.yaml")
    _fulfil("topics", "apply")
    for server in SERVICES:
        start(server)
    if os.environ.get("FULFIL_SKIP_SEED") != "1":
        say("seeding the catalogue (deploy/catalogue.yaml)")
        _fulfil("stock", "seed")
    say(f"services up in {time.monotonic() - t0:.1f}s (logs: {LOGS}, pids: {RUN})")
    for name, port in SERVICE_PORTS.items():
        say(f"  {name:10} http://{HOST}:{port}  (/health /ready /metrics)")


def services_down() -> None:
    for server in reversed(SERVICES):
        stop(server)


def up() -> None:
    t0 = time.monotonic()
    check_prerequisites()
    # Build everything before starting anything, so a failed build leaves nothing half-up.
    kafka_libs()
    ferretdb_binary()
    jaeger_binary()
    for server in SERVERS:
        start(server)
    say(f"infrastructure up in {time.monotonic() - t0:.1f}s")
    say(f"  Kafka      {HOST}:9092")
    say(f"  MongoDB    mongodb://{HOST}:27017 (FerretDB, SQLite backend)")
    say(f"  Jaeger     http://{HOST}:16686 (OTLP gRPC {HOST}:4317, HTTP {HOST}:4318)")
    say(f"  SMTP sink  {HOST}:1025, messages at http://{HOST}:8025/api/v1/messages")


def down() -> None:
    services_down()
    for server in reversed(SERVERS):
        stop(server)
    say("infrastructure down")


def status() -> int:
    bad = 0
    for server in SERVERS + SERVICES:
        ok = server.ready()
        pid = _read_pid(server)
        bad += not ok
        owner = f"pid {pid}" if pid else "(not started by us)" if ok else ""
        say(f"{server.name:10} {'UP  ' if ok else 'DOWN'} {owner}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    try:
        if cmd == "up":
            up()
            services_up()
        elif cmd == "infra-up":
            up()
        elif cmd == "services-up":
            services_up()
        elif cmd == "services-down":
            services_down()
        elif cmd == "down":
            down()
        elif cmd in ("start", "stop") and len(argv) > 2:
            by_name = {x.name: x for x in SERVERS + SERVICES}
            if argv[2] not in by_name:
                print(f"unknown server {argv[2]!r}; one of {sorted(by_name)}", file=sys.stderr)
                return 2
            (start if cmd == "start" else stop)(by_name[argv[2]])
        elif cmd == "status":
            return status()
        else:
            usage = "up|infra-up|services-up|services-down|down|status|start NAME|stop NAME"
            print(f"usage: {argv[0]} {usage}", file=sys.stderr)
            return 2
    except StackError as e:
        print(f"[stack] ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
