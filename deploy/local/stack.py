"""Bring the local stack up and down without Docker: Kafka, FerretDB, Jaeger and an SMTP sink.

    python deploy/local/stack.py up|down|status

``REPLICAS=N`` runs N copies of every service in the same consumer groups (copy k of ``order`` is ``order-k`` on
port 8080 + 100*(k-1)). ``FULFIL_STORE_BACKEND=sqlite|postgresql`` picks FerretDB's storage; ``postgresql`` adds a
private PostgreSQL cluster (``.local/data/postgres``, port ``FULFIL_POSTGRES_PORT``, default 5433).

Builds and downloads are cached outside the repository (``$FULFIL_CACHE``, default ``~/.cache/fulfil``) so a warm
start takes seconds; data, logs and pid files live in the git-ignored ``.local/`` folder of the repository.
"Up" returns only when every server answers; running it twice is harmless; "down" leaves no process behind.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
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

# SQLite stays the default (deploy/local/store_bench.py, 50k docs of ~2 KB, 2 shared cores): insert_many was 1.0-1.7x
# faster on PostgreSQL (equal in the quietest run), but FerretDB v1's PostgreSQL backend answers every lookup or
# update by _id with a scan of the collection (~2-3 docs/s), where the patched SQLite backend uses its index (190-540).
STORE_BACKENDS = ("sqlite", "postgresql")
STORE_BACKEND = os.environ.get("FULFIL_STORE_BACKEND", "sqlite")
POSTGRES_PORT = int(os.environ.get("FULFIL_POSTGRES_PORT", "5433"))
REPLICA_PORT_STEP = 100  # copy k of a service listens on its port + 100*(k-1)


class StackError(RuntimeError):
    """A prerequisite is missing or a server did not come up; the message says which."""


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def _run(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stdin: str | None = None,
    what: str,
) -> None:
    log = LOGS / "build.log"
    LOGS.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            user=user,
            input=stdin.encode() if stdin is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
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


@dataclass(frozen=True)
class Missing:
    """A prerequisite the machine lacks, and the Debian package that provides it (None: none is good enough)."""

    what: str
    package: str | None


GO_MIN = (1, 24)
JAVA_PACKAGES = ["openjdk-17-jre-headless", "openjdk-21-jre-headless", "openjdk-25-jre-headless"]


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's /usr/lib/postgresql/N/bin, else `postgres` on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).resolve().parent if on_path else None


def missing_prerequisites() -> list[Missing]:
    missing = []
    java = _version_of(["java", "-version"], r'version "(\d+)')
    if java is None or java < (17,):
        missing.append(Missing(f"Java 17+ (found {java[0] if java else 'none'})", JAVA_PACKAGES[0]))
    if shutil.which("mvn") is None:
        missing.append(Missing("Maven (mvn)", "maven"))
    go = _version_of(["go", "version"], r"go(\d+)\.(\d+)")
    if go is None or go < GO_MIN:
        found = ".".join(map(str, go)) if go else "none"
        missing.append(Missing(f"Go >= {'.'.join(map(str, GO_MIN))} (found {found})", "golang-go"))
    # The console's browser tests (tests/browser) drive Debian's headless Chromium; nothing is downloaded at test time.
    if shutil.which("/usr/bin/chromium") is None:
        missing.append(Missing("Chromium (/usr/bin/chromium, for the console's browser tests)", "chromium"))
    if shutil.which("/usr/bin/chromedriver") is None:
        missing.append(Missing("chromedriver (/usr/bin/chromedriver, for the browser tests)", "chromium-driver"))
    if STORE_BACKEND == "postgresql" and postgres_bindir() is None:
        missing.append(Missing("PostgreSQL server (FULFIL_STORE_BACKEND=postgresql)", "postgresql"))
    return missing


def debian_version(policy: str) -> tuple[int, ...] | None:
    """The upstream major.minor of the candidate in `apt-cache policy` output ("2:1.19~1" -> (1, 19))."""
    m = re.search(r"Candidate:\s*(?:\d+:)?(\d+)\.(\d+)", policy)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _apt_policy(package: str) -> str:
    return subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout


def _apt_candidate(package: str) -> tuple[int, ...] | None:
    return debian_version(_apt_policy(package))


def _apt_has(package: str) -> bool:
    return re.search(r"Candidate:\s*(?!\(none\))\S", _apt_policy(package)) is not None


def _install_from_debian(missing: list[Missing]) -> None:
    """Install what Debian can provide: Go only when its packaged version is new enough to build FerretDB/Jaeger."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say("installing missing prerequisites from Debian: apt-get update ...")
    _run(["apt-get", "update", "-qq"], env=env, what="apt-get update")
    packages = []
    for m in missing:
        if m.package == "golang-go" and (_apt_candidate("golang-go") or (0,)) < GO_MIN:
            continue  # Debian's Go is too old; named as missing below
        # Newer Debian releases ship a newer Java only: take the first package this release has.
        choices = JAVA_PACKAGES if m.package == JAVA_PACKAGES[0] else [m.package] if m.package else []
        if available := next((c for c in choices if _apt_has(c)), None):
            packages.append(available)
    if packages:
        say(f"apt-get install {' '.join(packages)} ...")
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, what="apt-get install")


def check_prerequisites() -> None:
    """Install what is missing from Debian when we can (root with apt-get), then fail naming what is still missing."""
    missing = missing_prerequisites()
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        _install_from_debian(missing)
        missing = missing_prerequisites()
    if missing:
        hints = {
            "golang-go": "install Go >= 1.24 from https://go.dev/dl/ (Debian's golang-go is older)",
            "openjdk-17-jre-headless": "install openjdk-17-jre-headless (or any Java 17+)",
        }
        lines = [f"{m.what}: {hints.get(m.package or '', f'install {m.package}')}" for m in missing]
        raise StackError("missing prerequisites:\n  - " + "\n  - ".join(lines))


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


def _writable_module_copy(module: str, dest: Path) -> Path:
    """A writable copy of a Go module (`path@version`) from the module cache, made once."""
    if not (dest / "go.mod").exists():
        out = subprocess.run(
            ["go", "mod", "download", "-json", module], capture_output=True, text=True, env=_go_env(), check=False
        )
        m = re.search(r'"Dir":\s*"([^"]+)"', out.stdout)
        if out.returncode != 0 or not m:
            raise StackError(f"go mod download {module} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(m.group(1), dest)
        for p in [dest, *dest.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    return dest


# Fixes to FerretDB v1.24, applied as exact text replacements to a copy of its module before building (the build
# fails if one no longer matches, e.g. after a version bump). Measured on 50k documents of ~2 KB: see store_bench.py.
FERRETDB_PATCHES = [
    # SQLite: its unique _id index is on `->"_id"`, but lookups, updates and deletes by _id filtered on `->'$._id'`,
    # which SQLite's planner does not match to that index: every find_one/update by _id scanned the collection.
    (
        "internal/backends/sqlite/metadata/metadata.go",
        """\tIDColumn = DefaultColumn + "->'$._id'"\n""",
        """\tIDColumn = DefaultColumn + "->'_id'"\n""",
    ),
    # Each statement of an `update` command kept its backend connection until the whole command ended (`defer` in
    # a loop), so a bulk_write of as many updates as the pool has connections (SQLite 100, PostgreSQL 50) hung.
    (
        "internal/handler/msg_update.go",
        "\t\tcloser := iterator.NewMultiCloser()\n\t\tdefer closer.Close()\n",
        "\t\tcloser := iterator.NewMultiCloser()\n",
    ),
    (
        "internal/handler/msg_update.go",
        '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n',
        '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n\t\tcloser.Close() // fulfil patch\n',
    ),
]


def ferretdb_binary() -> Path:
    src = HERE / "ferretdb"
    files = [src / "go.mod", src / "go.sum", src / "main.go"]
    patches = hashlib.sha256(repr(FERRETDB_PATCHES).encode()).hexdigest()[:8]
    binary = CACHE / "bin" / f"ferretdb-{_digest(*files)}-{patches}"
    if binary.exists():
        return binary
    m = re.search(r"github.com/FerretDB/FerretDB (v\S+)", (src / "go.mod").read_text())
    if not m:
        raise StackError(f"no FerretDB version in {src / 'go.mod'}")
    say(f"building FerretDB {m.group(1)} (embedded, SQLite and PostgreSQL backends, patched) with Go (~2 min) ...")
    work = CACHE / "src" / binary.name
    shutil.rmtree(work, ignore_errors=True)
    module = _writable_module_copy(f"github.com/FerretDB/FerretDB@{m.group(1)}", work / "FerretDB")
    for path, old, new in FERRETDB_PATCHES:
        text = (module / path).read_text()
        if text.count(old) != 1:
            raise StackError(f"FerretDB patch no longer applies to {path}: {old.strip()!r}")
        (module / path).write_text(text.replace(old, new))
    build = work / "build"
    build.mkdir()
    for f in files:
        shutil.copy(f, build / f.name)
    with (build / "go.mod").open("a") as mod:
        mod.write("\nreplace github.com/FerretDB/FerretDB => ../FerretDB\n")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    _run(["go", "build", "-o", str(tmp), "."], cwd=build, env=_go_env(), what="go build ferretdb")
    tmp.rename(binary)
    shutil.rmtree(work, ignore_errors=True)
    return binary


def jaeger_binary() -> Path:
    binary = CACHE / "bin" / f"jaeger-{JAEGER_VERSION}"
    if binary.exists():
        return binary
    say(f"building Jaeger {JAEGER_VERSION} (Jaeger 2.13) with Go (first run only, ~10 min) ...")
    # `go install` refuses the module (it has replace directives); build inside a writable copy instead.
    src = _writable_module_copy(
        f"github.com/jaegertracing/jaeger@{JAEGER_VERSION}", CACHE / "src" / f"jaeger-{JAEGER_VERSION}"
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    _run(["go", "build", "-o", str(tmp), "./cmd/jaeger"], cwd=src, env=_go_env(), what="go build jaeger")
    tmp.rename(binary)
    return binary


# ---------------------------------------------------------------- readiness probes


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _kafka_answers(port: int, **security: object) -> bool:
    """A metadata round trip on one listener (with ``security``, the SASL/TLS client options, a login too)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient  # venv dependency; the Makefile syncs it first

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=3000, **security)
        try:
            await admin.start()
            await admin.list_topics()  # a metadata round trip
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


def _tls_answers(port: int) -> bool:
    """A TLS handshake with the broker's certificate checked (the secured listener, before any login)."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=str(KAFKA_TLS / "ca.pem"))
        with socket.create_connection((HOST, port), timeout=3) as raw, context.wrap_socket(raw, server_hostname=HOST):
            return True
    except (OSError, ssl.SSLError):
        return False


def kafka_ready(node: int = 1) -> bool:
    plain, _, secure = broker_ports(node)
    if kafka_security() == "sasl_ssl":  # no PLAINTEXT listener: the secured one (the login follows: kafka_ensure_user)
        return _port_open(secure) and _tls_answers(secure)
    return _port_open(plain) and _kafka_answers(plain)


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
    env: dict[str, str] = field(default_factory=dict)  # on top of ours
    user: Callable[[], str | None] = lambda: None  # run as this OS user (PostgreSQL refuses root)
    stop_signal: signal.Signals = signal.SIGTERM
    signal_group: bool = True  # signal the whole process group, or only the process we started
    stop_timeout: float = 20.0

    @property
    def pidfile(self) -> Path:
        return RUN / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return LOGS / f"{self.name}.log"


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie counts as gone); also used by the chaos drill (tools/drills/chaos/)."""
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


def running_pid(pidfile: Path) -> int | None:
    """The live process a pid file names, or None (no file, no number in it, or the process is gone)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _read_pid(server: Server) -> int | None:
    return running_pid(server.pidfile)


def start(server: Server) -> None:
    pid = launch(server)
    if pid is not None:
        wait_ready(server, pid)


def start_together(servers: list[Server]) -> None:
    """Start several servers that only answer once enough of them run (the brokers of a KRaft quorum): launch
    them all, then wait for each."""
    pids = [(server, launch(server)) for server in servers]
    for server, pid in pids:
        if pid is not None:
            wait_ready(server, pid)


def launch(server: Server) -> int | None:
    """Start ``server`` unless it answers already (None then); the pid of its process."""
    if server.ready():
        say(f"{server.name}: already up")
        return None
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
                env={**os.environ, **server.env},
                user=server.user(),
                start_new_session=True,
            )
        server.pidfile.write_text(str(proc.pid))
        pid = proc.pid
        say(f"{server.name}: started (pid {pid}), waiting until it answers ...")
    return pid


def wait_ready(server: Server, pid: int) -> None:
    deadline = time.monotonic() + server.timeout
    while time.monotonic() < deadline:
        if server.ready():
            say(f"{server.name}: up")
            return
        if not pid_alive(pid):
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
        (os.killpg if server.signal_group else os.kill)(pid, server.stop_signal)
    deadline = time.monotonic() + server.stop_timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        say(f"{server.name}: did not stop in {server.stop_timeout:.0f}s, killing")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.1)
    server.pidfile.unlink(missing_ok=True)


# ---------------------------------------------------------------- the servers


def _kafka_prepare(node: int = 1) -> None:
    libs = kafka_libs()
    brokers = kafka_brokers()
    if node > brokers:
        raise StackError(
            f"{broker_name(node)} is a broker of a cluster, and this stack runs {brokers}: `make up KAFKA_BROKERS=3`"
        )
    data = DATA / broker_name(node)
    data.mkdir(parents=True, exist_ok=True)
    props = broker_properties(node)
    props.parent.mkdir(parents=True, exist_ok=True)
    kafka_tls()
    secured = kafka_security() == "sasl_ssl"
    template = (HERE / "kafka" / "server.properties").read_text()
    text = kafka_server_properties(
        template,
        data_dir=data,
        tls_dir=KAFKA_TLS,
        secured=secured,
        password=kafka_password() if secured else None,
        node=node,
        brokers=brokers,
    )
    _write_private(props, text.encode())  # secured, it holds the broker's own SCRAM password
    cluster_file = STATE / "kafka" / "cluster-id"  # one id for every broker of a cluster
    cluster_file.parent.mkdir(parents=True, exist_ok=True)
    if not cluster_file.exists():
        cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
    cluster_id = cluster_file.read_text().strip()
    kafka_brokers_file().parent.mkdir(parents=True, exist_ok=True)
    kafka_brokers_file().write_text(f"{brokers}\n")
    if not secured:
        _run(kafka_format_command(libs, cluster_id, props), what=f"{broker_name(node)} storage format")
        return
    # Secured, there is no PLAINTEXT listener to create the SCRAM user through later (and the controller does not
    # take that admin call): a fresh data directory gets the user when it is formatted. The credential goes in a
    # 0600 java argument file, never on a command line.
    scram = STATE / "kafka" / "format-scram.args"
    _write_private(scram, f"--add-scram\n{KAFKA_MECHANISM}=[name={KAFKA_USER},password={kafka_password()}]\n".encode())
    try:
        _run(kafka_format_command(libs, cluster_id, props, extra_args_file=scram), what="kafka storage format")
    finally:
        scram.unlink(missing_ok=True)


KAFKA_PLAIN_PORT = 9092  # development only: not opened with KAFKA_SECURITY=sasl_ssl
KAFKA_CONTROLLER_PORT = 9093  # KRaft's controller: loopback, never advertised
KAFKA_BROKER_PORT_STEP = 10  # broker k of a cluster listens on the ports of broker 1 + 10*(k-1)
KAFKA_CLUSTER_SIZES = (1, 3)  # a quorum of two would stop with either broker: one, or three
# What a cluster of three guarantees (the production topology, deploy/k8s/README.md): every partition on all three
# brokers, a write acknowledged by two, and no leader elected from a replica that missed acknowledged writes.
KAFKA_CLUSTER_DURABILITY = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    "unclean.leader.election.enable": "false",
}


def broker_name(node: int) -> str:
    """Broker 1 keeps the name ``kafka``; broker k of a cluster is ``kafka-k``."""
    return "kafka" if node == 1 else f"kafka-{node}"


def broker_ports(node: int) -> tuple[int, int, int]:
    """(PLAINTEXT, CONTROLLER, SASL_SSL) ports of broker ``node``."""
    step = KAFKA_BROKER_PORT_STEP * (node - 1)
    return KAFKA_PLAIN_PORT + step, KAFKA_CONTROLLER_PORT + step, KAFKA_SECURE_PORT + step


def broker_properties(node: int) -> Path:
    return STATE / broker_name(node) / "server.properties"


def kafka_brokers_file() -> Path:
    """How many brokers the data directories were formatted for (KRaft's voters are fixed then)."""
    return STATE / "kafka" / "brokers"


def kafka_brokers_formatted() -> int | None:
    try:
        return int(kafka_brokers_file().read_text().strip())
    except (OSError, ValueError):
        return None


def kafka_brokers() -> int:
    """How many brokers: KAFKA_BROKERS when given, else as many as the data directories were formatted for (so
    `make chaos` after `make up KAFKA_BROKERS=3` knows the cluster), else one."""
    raw = os.environ.get("KAFKA_BROKERS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) not in KAFKA_CLUSTER_SIZES:
            raise StackError(f"KAFKA_BROKERS must be 1 or 3, not {raw!r}")
        return int(raw)
    return kafka_brokers_formatted() or 1


def kafka_cluster_problem() -> str | None:
    """A cluster size other than the one the local data was formatted for (KRaft's voters are fixed at format)."""
    formatted, wanted = kafka_brokers_formatted(), kafka_brokers()
    data = DATA / broker_name(1)
    if formatted is None or formatted == wanted or not (data.is_dir() and any(data.iterdir())):
        return None
    return (
        f"the local Kafka data was formatted for {formatted} broker(s), not {wanted}: keep KAFKA_BROKERS={formatted}, "
        "or `make clean` (deletes all local data) to start a new cluster"
    )


def kafka_bootstrap() -> str:
    """Every broker's client listener: a client then starts with any of them up."""
    secured = kafka_security() == "sasl_ssl"
    return ",".join(f"{HOST}:{broker_ports(k)[2 if secured else 0]}" for k in range(1, kafka_brokers() + 1))


def kafka_quorum_leader() -> int | None:
    """The node id of the active controller (the KRaft quorum's leader), or None when no broker answers."""
    try:
        done = subprocess.run(
            [
                *_java(kafka_libs(), "kafka-tools"),
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                kafka_bootstrap(),
                "describe",
                "--status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    found = re.search(r"^LeaderId:\s*(\d+)", done.stdout, re.MULTILINE)
    return int(found.group(1)) if found else None


def cluster_env() -> dict[str, str]:
    """The bootstrap list of a cluster for the services and tools this script starts; nothing for one broker."""
    try:
        brokers = kafka_brokers()
    except StackError:
        return {}
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap()} if brokers > 1 else {}


def kafka_server_properties(
    template: str,
    *,
    data_dir: Path,
    tls_dir: Path,
    secured: bool,
    password: str | None = None,
    node: int = 1,
    brokers: int = 1,
) -> str:
    """The broker's server.properties from ``deploy/local/kafka/server.properties``.

    Development (``KAFKA_SECURITY=plaintext``, the default): as the template says, PLAINTEXT on 9092 next to
    SASL_SSL on 9094. Secured (``KAFKA_SECURITY=sasl_ssl``): only SASL_SSL on 9094 is a broker listener (inter-broker
    traffic too, logging in as the SCRAM user with ``password``); no PLAINTEXT listener at all, so nobody on the host
    reaches Kafka without the password. The controller listener stays on 127.0.0.1:9093, not advertised.

    Broker ``node`` of a cluster of ``brokers`` (three): its own ports and data directory, the three controllers as
    the quorum's voters, and the cluster's durability (:data:`KAFKA_CLUSTER_DURABILITY`).
    """
    text = template.replace("@DATA_DIR@", str(data_dir)).replace("@TLS_DIR@", str(tls_dir))
    plain, controller, secure = broker_ports(node)
    overrides: dict[str, str] = {}
    if brokers > 1:
        if secured:
            raise StackError("KAFKA_SECURITY=sasl_ssl runs on one broker locally: use KAFKA_BROKERS=1 with it")
        voters = ",".join(f"{k}@{HOST}:{broker_ports(k)[1]}" for k in range(1, brokers + 1))
        overrides = {
            "node.id": str(node),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{plain},CONTROLLER://{HOST}:{controller},SASL_SSL://{HOST}:{secure}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{plain},SASL_SSL://{HOST}:{secure}",
            **KAFKA_CLUSTER_DURABILITY,
        }
    if not secured:
        return _override(text, overrides, "# KAFKA_BROKERS=3: one broker of a three-broker cluster.")
    if not password:
        raise StackError("the secured Kafka listener needs the SCRAM user's password")
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required"
    overrides = {
        "listeners": f"CONTROLLER://{HOST}:{KAFKA_CONTROLLER_PORT},SASL_SSL://{HOST}:{KAFKA_SECURE_PORT}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{KAFKA_SECURE_PORT}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.mechanism.inter.broker.protocol": KAFKA_MECHANISM,
        f"listener.name.sasl_ssl.{KAFKA_MECHANISM.lower()}.sasl.jaas.config": (
            f'{jaas} username="{KAFKA_USER}" password="{password}";'
        ),
        # The broker as a client of its own listener (inter-broker): it checks the certificate like any client.
        "listener.name.sasl_ssl.ssl.truststore.type": "PEM",
        "listener.name.sasl_ssl.ssl.truststore.location": str(tls_dir / "ca.pem"),
    }
    return _override(text, overrides, "# KAFKA_SECURITY=sasl_ssl: SASL_SSL is the only broker listener.")


def _override(text: str, overrides: Mapping[str, str], heading: str) -> str:
    """``text`` (a properties file) with each key of ``overrides`` set in place, the keys it lacks appended."""
    if not overrides:
        return text
    left = dict(overrides)
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        lines.append(f"{key}={left.pop(key)}" if key in left else line)
    lines += [heading, *(f"{k}={v}" for k, v in left.items())] if left else []
    return "\n".join(lines) + "\n"


def kafka_format_command(libs: Path, cluster_id: str, props: Path, *, extra_args_file: Path | None = None) -> list[str]:
    """``kafka-storage format`` for ``cluster_id``. The id is base64url and may begin with ``-``: given as a separate
    argument it would be read as an option, so it is joined to its flag. With controller.quorum.voters set,
    formatting takes no --standalone flag. ``extra_args_file``: more arguments, read by the java launcher from the
    file (``@file``), for a secret that must not appear on the command line."""
    return [
        *_java(libs),
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cluster_id}",
        f"--config={props}",
        "--ignore-formatted",
        *([f"@{extra_args_file}"] if extra_args_file is not None else []),
    ]


def _java(libs: Path, log_name: str = "kafka") -> list[str]:
    return [
        "java",
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={LOGS}",
        f"-Dkafka.log.name={log_name}",  # each broker of a cluster logs to its own file
        "-cp",
        f"{libs}/*",
    ]


# ---------------------------------------------------------------- Kafka's secured listener (SASL_SSL, SCRAM-SHA-512)

KAFKA_SECURE_PORT = 9094
KAFKA_USER = "fulfil"
KAFKA_MECHANISM = "SCRAM-SHA-512"
KAFKA_TLS = STATE / "kafka" / "tls"
KAFKA_PASSWORD_FILE = STATE / "kafka" / f"{KAFKA_USER}.password"


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read: mode 0600 from its creation on, never readable by others meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)  # a file that existed keeps its old mode through O_CREAT


def kafka_tls(tls_dir: Path = KAFKA_TLS) -> tuple[Path, Path]:
    """A local CA and the broker's certificate for 127.0.0.1/localhost, made once: (CA file, broker key + chain).

    The CA's key is never written down: nothing can sign another certificate with it; deleting ``tls_dir`` and
    restarting Kafka rotates both (clients then need the new CA file).
    """
    ca_file, broker_file = tls_dir / "ca.pem", tls_dir / "broker.pem"
    if ca_file.exists() and broker_file.exists():
        return ca_file, broker_file
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    say(f"kafka: creating a local CA and the broker's certificate in {tls_dir}")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fulfil local CA")])
    usage = dict.fromkeys(
        ["content_commitment", "data_encipherment", "key_agreement", "encipher_only", "decipher_only"], False
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, key_encipherment=False, **usage),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # Kafka's PEM key store: the unencrypted PKCS#8 key, then the chain (the file is 0600, like the password's).
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(broker_file, key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
    ca_file.write_bytes(ca.public_bytes(pem))
    return ca_file, broker_file


def kafka_password() -> str:
    """The SCRAM user's password: random on first use, kept in a 0600 file under .local/."""
    if not KAFKA_PASSWORD_FILE.exists():
        _write_private(KAFKA_PASSWORD_FILE, base64.urlsafe_b64encode(os.urandom(24)).rstrip(b"="))
    return KAFKA_PASSWORD_FILE.read_text().strip()


def secure_client_env() -> dict[str, str]:
    """The environment that points a service or the `fulfil` CLI at the secured listener."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{KAFKA_SECURE_PORT}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": KAFKA_MECHANISM,
        "KAFKA_SASL_USERNAME": KAFKA_USER,
        "KAFKA_SASL_PASSWORD": kafka_password(),
        "KAFKA_SSL_CAFILE": str(KAFKA_TLS / "ca.pem"),
    }


def kafka_security() -> str:
    """KAFKA_SECURITY=sasl_ssl runs the services (and the stack's `fulfil` calls) through the secured listener."""
    value = os.environ.get("KAFKA_SECURITY", "").strip().lower() or "plaintext"
    if value not in ("plaintext", "sasl_ssl"):
        raise StackError(f"KAFKA_SECURITY must be plaintext or sasl_ssl, not {value!r}")
    return value


def client_env() -> dict[str, str]:
    """What the services and the stack's `fulfil` calls get on top of the environment."""
    return secure_client_env() if kafka_security() == "sasl_ssl" else cluster_env()


def say_secure_connection() -> None:
    """How to reach the secured listener; the password is named by its file, never printed."""
    env = {**secure_client_env(), "KAFKA_SASL_PASSWORD": f"$(cat {KAFKA_PASSWORD_FILE})"}
    say("  secured Kafka: " + " ".join(f"{k}={v}" for k, v in env.items()))


def kafka_secure_login(password: str, *, port: int = KAFKA_SECURE_PORT) -> bool | None:
    """Whether the SCRAM user logs in on the secured listener: None when nothing listens there (an older broker)."""
    if not _port_open(port):
        return None
    import logging
    import ssl

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a refused login is an answer here, not an error
    return _kafka_answers(
        port,
        security_protocol="SASL_SSL",
        ssl_context=ssl.create_default_context(cafile=str(KAFKA_TLS / "ca.pem")),
        sasl_mechanism=KAFKA_MECHANISM,
        sasl_plain_username=KAFKA_USER,
        sasl_plain_password=password,
    )


def kafka_ensure_user(*, plain_port: int = KAFKA_PLAIN_PORT, secure_port: int = KAFKA_SECURE_PORT) -> None:
    """Create (or reset) the SCRAM user on the running broker unless it already logs in with the stored password.

    KRaft keeps SCRAM credentials in its metadata log; `kafka-configs` (the jars' ConfigCommand) upserts them through
    the admin API on the PLAINTEXT listener. The password travels in a 0600 file, never on a command line or a log.
    Secured (KAFKA_SECURITY=sasl_ssl) there is no PLAINTEXT listener, and the controller does not take this call:
    the user is written when the data directory is formatted (``_kafka_prepare``), or was created by an earlier
    development start; otherwise this says how to get it.
    """
    password = kafka_password()
    if kafka_security() == "sasl_ssl":
        deadline = time.monotonic() + 30
        while not (login := kafka_secure_login(password, port=secure_port)) and time.monotonic() < deadline:
            time.sleep(1)
        if not login:
            raise StackError(
                f"the SCRAM user {KAFKA_USER!r} cannot log in on {HOST}:{secure_port}, and a secured Kafka has no "
                "PLAINTEXT listener to create it through: start Kafka once without KAFKA_SECURITY (`stack.py stop "
                "kafka`, `make up`: the user is created), then again with KAFKA_SECURITY=sasl_ssl"
            )
        return
    login = kafka_secure_login(password, port=secure_port)
    if login is None:
        say(f"kafka: no secured listener on {HOST}:{secure_port}: this broker predates it; restart Kafka once")
        return
    if login:
        return
    say(f"kafka: creating SCRAM user {KAFKA_USER!r} ({KAFKA_MECHANISM})")
    request = STATE / "kafka" / "scram-user.properties"
    # A file takes the value without the brackets `--add-config` strips: MECHANISM=iterations=N,password=P.
    _write_private(request, f"{KAFKA_MECHANISM}=iterations=8192,password={password}\n".encode())
    try:
        _run(
            [
                *_java(kafka_libs()),
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                f"{HOST}:{plain_port}",
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                KAFKA_USER,
                "--add-config-file",
                str(request),
            ],
            what=f"create the Kafka SCRAM user {KAFKA_USER}",
        )
    finally:
        request.unlink(missing_ok=True)
    # The credential reaches the listener through the metadata log: wait until a login succeeds.
    deadline = time.monotonic() + 30
    while not kafka_secure_login(password, port=secure_port):
        if time.monotonic() > deadline:
            raise StackError(f"the SCRAM user {KAFKA_USER!r} still cannot log in on {HOST}:{secure_port}")
        time.sleep(1)


# ---------------------------------------------------------------- PostgreSQL (FerretDB's postgresql backend)

PG_DATA = DATA / "postgres"
PG_SOCKETS = RUN / "postgres"
PG_DATABASE = "ferretdb"  # database and role FerretDB uses
PG_PASSFILE = STATE / "postgres" / "pgpass"
# A dev box, durably: fsync, full_page_writes and synchronous_commit stay on (a commit FerretDB acknowledged must
# survive a crash, since the services commit Kafka offsets after it); memory and checkpoints sized for throughput.
POSTGRES_SETTINGS = {
    "listen_addresses": HOST,
    "max_connections": "120",  # FerretDB's pool takes up to 50
    "shared_buffers": "256MB",
    "effective_cache_size": "1GB",
    "work_mem": "16MB",
    "maintenance_work_mem": "128MB",
    "wal_buffers": "16MB",
    "min_wal_size": "256MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "log_min_duration_statement": "2s",
}


def postgres_os_user() -> str | None:
    """PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` system user."""
    return "postgres" if os.geteuid() == 0 else None


def _postgres_superuser() -> str:
    # initdb names the superuser after the OS user running it; local connections use peer authentication.
    return postgres_os_user() or pwd.getpwuid(os.geteuid()).pw_name


def _pg_bin(name: str) -> str:
    bindir = postgres_bindir()
    if bindir is None:
        raise StackError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return str(bindir / name)


def _chown_to_postgres(path: Path) -> None:
    if (user := postgres_os_user()) is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def postgres_ready() -> bool:
    if postgres_bindir() is None or not _port_open(POSTGRES_PORT):
        return False
    cmd = [_pg_bin("pg_isready"), "-q", "-h", str(PG_SOCKETS), "-p", str(POSTGRES_PORT), "-d", "postgres"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _postgres_prepare() -> None:
    """Create the private cluster on first use (as the `postgres` user when we are root)."""
    user = postgres_os_user()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise StackError("running as root needs the 'postgres' system user (apt-get install postgresql)") from None
    PG_SOCKETS.mkdir(parents=True, exist_ok=True)
    _chown_to_postgres(PG_SOCKETS)
    if (PG_DATA / "PG_VERSION").exists():
        return
    say(f"postgres: creating a cluster in {PG_DATA}")
    PG_DATA.mkdir(parents=True, exist_ok=True)
    PG_DATA.chmod(0o700)
    _chown_to_postgres(PG_DATA)
    initdb = [_pg_bin("initdb"), "-D", str(PG_DATA), "-E", "UTF8", "--locale=C", "--data-checksums"]
    _run([*initdb, "--auth-local=peer", "--auth-host=scram-sha-256"], user=user, what="initdb")
    # FerretDB logs in with a password (from PG_PASSFILE); everything else local is the superuser by peer.
    hba = PG_DATA / "pg_hba.conf"
    hba.write_text(
        f"local  {PG_DATABASE}  {PG_DATABASE}  scram-sha-256\n"
        f"host   {PG_DATABASE}  {PG_DATABASE}  {HOST}/32  scram-sha-256\n"
        "local  all  all  peer\n"
    )
    _chown_to_postgres(hba)


def _postgres_command() -> list[str]:
    settings = {**POSTGRES_SETTINGS, "port": str(POSTGRES_PORT), "unix_socket_directories": str(PG_SOCKETS)}
    return [_pg_bin("postgres"), "-D", str(PG_DATA), *(a for k, v in settings.items() for a in ("-c", f"{k}={v}"))]


def postgres_url() -> str:
    return f"postgres://{PG_DATABASE}@{HOST}:{POSTGRES_PORT}/{PG_DATABASE}"


def _ferretdb_prepare() -> None:
    """For the postgresql backend: FerretDB's role (password in PG_PASSFILE) and database, created once."""
    if STORE_BACKEND != "postgresql":
        return
    PG_PASSFILE.parent.mkdir(parents=True, exist_ok=True)
    secret = PG_PASSFILE.parent / "ferretdb.password"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text(base64.urlsafe_b64encode(os.urandom(24)).decode())
    password = secret.read_text().strip()
    PG_PASSFILE.touch(mode=0o600)
    PG_PASSFILE.write_text(f"*:{POSTGRES_PORT}:{PG_DATABASE}:{PG_DATABASE}:{password}\n")
    # The password reaches psql on stdin (never argv or the build log); format(%L) quotes it, and \\gexec creates
    # the role and the database only when they are missing.
    sql = f"""\\set ON_ERROR_STOP on
\\set pw '{password}'
SELECT format('CREATE ROLE {PG_DATABASE} LOGIN PASSWORD %L', :'pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_DATABASE}') \\gexec
SELECT format('ALTER ROLE {PG_DATABASE} PASSWORD %L', :'pw') \\gexec
SELECT 'CREATE DATABASE {PG_DATABASE} OWNER {PG_DATABASE}'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{PG_DATABASE}') \\gexec
"""  # noqa: S608 -- constants and a generated base64 password, no outside input
    psql = [_pg_bin("psql"), "-X", "-q", "-h", str(PG_SOCKETS), "-p", str(POSTGRES_PORT)]
    _run(
        [*psql, "-U", _postgres_superuser(), "-d", "postgres"],
        user=postgres_os_user(),
        stdin=sql,
        what="create FerretDB's PostgreSQL role and database",
    )


def _ferretdb_command() -> list[str]:
    binary = [str(ferretdb_binary()), "-listen", f"{HOST}:27017"]
    if STORE_BACKEND == "postgresql":
        return [*binary, "-backend", "postgresql", "-postgresql-url", postgres_url()]
    return [*binary, "-backend", "sqlite", "-data", str(DATA / "ferretdb")]


POSTGRES = Server(
    name="postgres",
    ready=postgres_ready,
    prepare=_postgres_prepare,
    command=_postgres_command,
    ports=[POSTGRES_PORT],
    user=postgres_os_user,
    # SIGINT to the postmaster alone is PostgreSQL's "fast" shutdown: a clean checkpoint, no crash recovery.
    stop_signal=signal.SIGINT,
    signal_group=False,
    stop_timeout=60,
)

PROVIDER_SIM_PORT = 8070
PROVIDERS_STATE = STATE / "providers"  # the simulator's keys and the providers.env it writes


# Every server this script may start, in start order; PostgreSQL only runs for FULFIL_STORE_BACKEND=postgresql,
# but `down`, `status` and `start|stop NAME` always know it.
def _broker(node: int) -> Server:
    return Server(
        name=broker_name(node),
        ready=lambda: kafka_ready(node),
        prepare=lambda: _kafka_prepare(node),
        command=lambda: [*_java(kafka_libs(), broker_name(node)), "kafka.Kafka", str(broker_properties(node))],
        ports=list(broker_ports(node)),
        timeout=120 if node > 1 else 90.0,
    )


BROKERS = [_broker(k) for k in range(1, max(KAFKA_CLUSTER_SIZES) + 1)]

ALL_SERVERS = [
    *BROKERS,
    POSTGRES,
    Server(
        name="ferretdb",
        ready=mongo_ready,
        prepare=_ferretdb_prepare,
        command=_ferretdb_command,
        ports=[27017],
        env={"PGPASSFILE": str(PG_PASSFILE)},
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
    # Alipay, WeChat Pay, SF Express and JD Logistics as their real clients see them (deploy/local/provider_sim).
    Server(
        name="provider-sim",
        ready=lambda: _http_ok(f"http://{HOST}:{PROVIDER_SIM_PORT}/health"),
        command=lambda: [
            sys.executable,
            "-m",
            "deploy.local.provider_sim",
            "--state",
            str(PROVIDERS_STATE),
            "--port",
            str(PROVIDER_SIM_PORT),
            # The carriers push parcel routes to the shipping service's first copy (a carrier has one URL per
            # account); while it is down, pushes fail, are retried, and the route queries catch up.
            "--sf-push-url",
            f"http://{HOST}:{replica_port('shipping', 1)}/shipping/notify/sf",
            "--jd-push-url",
            f"http://{HOST}:{replica_port('shipping', 1)}/shipping/notify/jd",
        ],
        ports=[PROVIDER_SIM_PORT],
        timeout=60,  # the first start makes its key pairs
    ),
]
SERVERS = [s for s in ALL_SERVERS if (s is not POSTGRES or STORE_BACKEND == "postgresql") and s not in BROKERS]


def brokers_wanted() -> list[Server]:
    return BROKERS[: kafka_brokers()]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


SERVICE_PORTS = {"order": 8080, "payment": 8081, "inventory": 8082, "shipping": 8083, "notify": 8084}
MAX_REPLICAS = 9  # copy 10 of order would listen on 9080, next to Kafka's ports


def replica_name(service: str, copy: int) -> str:
    """Copy 1 keeps the service's name; copy k is `service-k`."""
    return service if copy == 1 else f"{service}-{copy}"


def replica_port(service: str, copy: int) -> int:
    return SERVICE_PORTS[service] + REPLICA_PORT_STEP * (copy - 1)


def parse_replica(name: str) -> tuple[str, int] | None:
    """("order", 1) for "order", ("order", 2) for "order-2"; None for a name that is no service copy."""
    m = re.fullmatch(r"([a-z]+)(?:-(\d+))?", name)
    if not m or m.group(1) not in SERVICE_PORTS:
        return None
    copy = int(m.group(2) or 1)
    return (m.group(1), copy) if (m.group(2) is None or copy >= 2) and copy <= MAX_REPLICAS else None


def replicas_wanted() -> int:
    raw = os.environ.get("REPLICAS", "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_REPLICAS:
        raise StackError(f"REPLICAS must be a number from 1 to {MAX_REPLICAS}, not {raw!r}")
    return int(raw)


def provider_env() -> dict[str, str]:
    """The provider settings the simulator wrote on its first start (KEY=VALUE lines, `#` comments); none before."""
    path = PROVIDERS_STATE / "providers.env"
    if not path.exists():
        return {}
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.partition("=") for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def _service(name: str, copy: int = 1) -> Server:
    port = replica_port(name, copy)
    return Server(
        name=replica_name(name, copy),
        # /ready holds a copy that joined its consumer groups without partitions (a spare) as ready.
        ready=lambda: _http_ok(f"http://{HOST}:{port}/ready"),
        command=lambda: [sys.executable, "-m", f"services.{name}"],
        ports=[port],
        timeout=60,
        # Every copy joins the same consumer groups (the group id is the service name); only the port differs.
        # Built when the copy is started, after provider-sim has written its providers.env.
        env={"HTTP_PORT": str(port), **provider_env(), **client_env()},
    )


CONSOLE_PORT = 8090
CONSOLE_KEY_FILE = STATE / "console" / "operator-key"  # the console makes it on first start (no API_KEYS set)

# The ops console (tools/console): reads the topics from the beginning, serves the board on 127.0.0.1:8090.
CONSOLE = Server(
    name="console",
    ready=lambda: _http_ok(f"http://{HOST}:{CONSOLE_PORT}/health"),
    command=lambda: [sys.executable, "-m", "tools.console"],
    ports=[CONSOLE_PORT],
    timeout=60,
    env={"HTTP_PORT": str(CONSOLE_PORT), "CONSOLE_KEY_FILE": str(CONSOLE_KEY_FILE), **cluster_env()},
)


def _copies_started() -> int:
    """The highest copy number with a pid file, so `down` stops replicas whatever REPLICAS says now."""
    copies = [parse_replica(p.stem) for p in RUN.glob("*-*.pid")]
    return max([c[1] for c in copies if c is not None], default=1)


def services(replicas: int) -> list[Server]:
    """Copies 1..replicas of every service, service by service."""
    return [_service(n, k) for n in SERVICE_PORTS for k in range(1, replicas + 1)]


def _extra_copies(replicas: int) -> list[Server]:
    return [_service(n, k) for n in SERVICE_PORTS for k in range(replicas + 1, _copies_started() + 1)]


def _fulfil(*args: str) -> None:
    env = {**os.environ, **client_env()}
    _run([sys.executable, "-m", "tools.fulfil.cli", *args], env=env, what=f"fulfil {' '.join(args)}")


def services_up() -> None:
    t0 = time.monotonic()
    replicas = replicas_wanted()
    say("applying topics from deploy/topics.yaml")
    _fulfil("topics", "apply", "--yes", *(["--cluster"] if kafka_brokers() > 1 else []))
    for server in services(replicas):
        start(server)
    # Copies beyond REPLICAS (from an earlier `make up REPLICAS=N`) are left alone, but said.
    extra = [s.name for s in _extra_copies(replicas) if _read_pid(s) is not None]
    if extra:
        say(f"still running beyond REPLICAS={replicas}: {', '.join(extra)} (`stack.py stop NAME` or `make down`)")
    if os.environ.get("FULFIL_SKIP_SEED") != "1":
        say("seeding the catalogue (deploy/catalogue.yaml)")
        _fulfil("stock", "seed", "--yes")
    start(CONSOLE)
    say(f"services up in {time.monotonic() - t0:.1f}s (logs: {LOGS}, pids: {RUN})")
    for name in SERVICE_PORTS:
        urls = "  ".join(f"http://{HOST}:{replica_port(name, k)}" for k in range(1, replicas + 1))
        say(f"  {name:10} {urls}  (/health /ready /metrics)")
    say(f"  ops console  http://{HOST}:{CONSOLE_PORT}  (operator key: API_KEYS, or the one in {CONSOLE_KEY_FILE})")


def services_down() -> None:
    stop(CONSOLE)
    for server in reversed(services(_copies_started())):
        stop(server)


def up() -> None:
    t0 = time.monotonic()
    check_prerequisites()
    # Build everything before starting anything, so a failed build leaves nothing half-up.
    kafka_libs()
    ferretdb_binary()
    jaeger_binary()
    if problem := kafka_mode_problem() or kafka_cluster_problem():
        raise StackError(problem)
    start_together(brokers_wanted())
    for server in SERVERS:
        start(server)
    _warn_if_other_backend()
    kafka_ensure_user()
    say(f"infrastructure up in {time.monotonic() - t0:.1f}s")
    if kafka_brokers() > 1:
        say(f"  Kafka      {kafka_bootstrap()} (PLAINTEXT; {kafka_brokers()} brokers, replication 3, min ISR 2)")
    elif kafka_security() == "sasl_ssl":
        say(f"  Kafka      {HOST}:{KAFKA_SECURE_PORT} (SASL_SSL, {KAFKA_MECHANISM}) only: no PLAINTEXT listener")
    else:
        say(f"  Kafka      {HOST}:9092 (PLAINTEXT), {HOST}:{KAFKA_SECURE_PORT} (SASL_SSL, {KAFKA_MECHANISM})")
    if _port_open(KAFKA_SECURE_PORT):
        say_secure_connection()
    store = f"PostgreSQL on {HOST}:{POSTGRES_PORT}" if STORE_BACKEND == "postgresql" else "SQLite"
    say(f"  MongoDB    mongodb://{HOST}:27017 (FerretDB, {store} backend)")
    say(f"  Jaeger     http://{HOST}:16686 (OTLP gRPC {HOST}:4317, HTTP {HOST}:4318)")
    say(f"  SMTP sink  {HOST}:1025, messages at http://{HOST}:8025/api/v1/messages")
    say(f"  Providers  http://{HOST}:{PROVIDER_SIM_PORT} (Alipay, WeChat Pay, SF Express, JD Logistics)")
    say(f"             their settings for the services: {PROVIDERS_STATE / 'providers.env'}")


def kafka_mode_problem() -> str | None:
    """A running Kafka whose listeners are not the ones KAFKA_SECURITY asks for (they are set when it starts)."""
    if _read_pid(BROKERS[0]) is None:
        return None
    restart = "restart Kafka: `.venv/bin/python deploy/local/stack.py stop kafka`, then `make up`"
    if kafka_security() == "sasl_ssl" and _port_open(KAFKA_PLAIN_PORT):
        return f"KAFKA_SECURITY=sasl_ssl, but the running Kafka has its PLAINTEXT listener open on 9092: {restart}"
    if kafka_security() == "plaintext" and not _port_open(KAFKA_PLAIN_PORT) and _port_open(KAFKA_SECURE_PORT):
        return f"the running Kafka is secured (SASL_SSL only): set KAFKA_SECURITY=sasl_ssl, or {restart}"
    return None


def _warn_if_other_backend() -> None:
    """A FerretDB already running keeps its backend: say so when another one is asked for."""
    ferretdb = next(s for s in SERVERS if s.name == "ferretdb")
    if (pid := _read_pid(ferretdb)) is None:
        return
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        running = args[args.index(b"-backend") + 1].decode() if b"-backend" in args else "sqlite"
        if running != STORE_BACKEND:
            say(
                f"WARNING: ferretdb (pid {pid}) runs the {running} backend, not {STORE_BACKEND}; to switch: "
                "`stack.py stop ferretdb` then `make up` again (each backend keeps its own data)"
            )


def down() -> None:
    services_down()
    for server in reversed(ALL_SERVERS):
        stop(server)
    say("infrastructure down")


def status() -> int:
    """Servers and the wanted service copies, plus any other copy or server of ours still running."""
    replicas = replicas_wanted()
    wanted = [*brokers_wanted(), *SERVERS, *services(replicas), CONSOLE]
    others = [s for s in [*BROKERS, POSTGRES, *_extra_copies(replicas)] if s not in wanted and _read_pid(s) is not None]
    bad = 0
    for server in wanted + others:
        ok = server.ready()
        pid = _read_pid(server)
        bad += not ok and server in wanted
        owner = f"pid {pid}" if pid else "(not started by us)" if ok else ""
        say(f"{server.name:10} {'UP  ' if ok else 'DOWN'} {owner}")
    if KAFKA_PASSWORD_FILE.exists() and _port_open(KAFKA_SECURE_PORT):
        say_secure_connection()
    return 1 if bad else 0


def server_named(name: str) -> Server | None:
    """A server, or a copy of a service ("order", "order-2", ...)."""
    if (server := next((s for s in [*ALL_SERVERS, CONSOLE] if s.name == name), None)) is not None:
        return server
    replica = parse_replica(name)
    return _service(*replica) if replica else None


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    if STORE_BACKEND not in STORE_BACKENDS:
        print(
            f"[stack] ERROR: FULFIL_STORE_BACKEND must be one of {STORE_BACKENDS}, not {STORE_BACKEND!r}",
            file=sys.stderr,
        )
        return 2
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
            server = server_named(argv[2])
            if server is None:
                known = [s.name for s in ALL_SERVERS] + [f"{n}[-2..{MAX_REPLICAS}]" for n in SERVICE_PORTS]
                print(f"unknown server {argv[2]!r}; one of {', '.join(known)}", file=sys.stderr)
                return 2
            (start if cmd == "start" else stop)(server)
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
