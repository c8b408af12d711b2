"""The local stack's pure helpers (deploy/local/stack.py): replica names and ports, prerequisites, store backend.

No server is started: the functions that decide what to run are checked on their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_stack

stack = load_stack()


def test_second_copy_of_a_service_is_named_after_it_and_listens_100_ports_higher() -> None:
    assert [stack.replica_name("order", k) for k in (1, 2, 3)] == ["order", "order-2", "order-3"]
    assert [stack.replica_port("order", k) for k in (1, 2, 3)] == [8080, 8180, 8280]
    assert stack.replica_port("notify", 2) == 8184


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("order", ("order", 1)),
        ("order-2", ("order", 2)),
        ("notify-9", ("notify", 9)),
        ("order-1", None),  # copy 1 is plain "order"
        ("order-10", None),
        ("kafka", None),
        ("smtp-sink", None),
        ("order-x", None),
    ],
)
def test_parse_replica_accepts_only_service_copies(name: str, parsed: tuple[str, int] | None) -> None:
    assert stack.parse_replica(name) == parsed


def test_every_copy_gets_its_port_in_http_port_and_the_same_command() -> None:
    copies = stack.services(2)
    assert [s.name for s in copies[:2]] == ["order", "order-2"]
    assert [s.env["HTTP_PORT"] for s in copies[:2]] == ["8080", "8180"]
    assert copies[0].command() == copies[1].command()
    assert [s.pidfile.name for s in copies[:2]] == ["order.pid", "order-2.pid"]
    assert copies[1].logfile.name == "order-2.log"


@pytest.mark.parametrize(("raw", "wanted"), [("", 1), ("1", 1), ("2", 2), (" 3 ", 3)])
def test_replicas_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, wanted: int) -> None:
    monkeypatch.setenv("REPLICAS", raw)
    assert stack.replicas_wanted() == wanted


@pytest.mark.parametrize("raw", ["0", "10", "two", "-1"])
def test_replicas_out_of_range_are_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("REPLICAS", raw)
    with pytest.raises(stack.StackError, match="REPLICAS"):
        stack.replicas_wanted()


def test_a_pid_file_names_a_running_process_only_while_it_runs(tmp_path: Path) -> None:
    done = subprocess.Popen(["true"])
    done.wait()  # reaped: its pid names no process now
    files = {"self": os.getpid(), "gone": done.pid, "garbled": "twelve"}
    for name, content in files.items():
        (tmp_path / f"{name}.pid").write_text(f"{content}\n")

    found = {name: stack.running_pid(tmp_path / f"{name}.pid") for name in [*files, "missing"]}

    assert found == {"self": os.getpid(), "gone": None, "garbled": None, "missing": None}


def test_down_finds_copies_from_their_pid_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(stack, "RUN", tmp_path)
    assert stack._copies_started() == 1
    for name in ("order.pid", "order-2.pid", "payment-3.pid", "smtp-sink.pid"):
        (tmp_path / name).write_text("1")
    assert stack._copies_started() == 3
    assert [s.name for s in stack._extra_copies(2) if s.name.startswith("payment")] == ["payment-3"]


@pytest.mark.parametrize(
    ("policy", "version"),
    [
        ("golang-go:\n  Installed: (none)\n  Candidate: 2:1.19~1\n", (1, 19)),
        ("golang-go:\n  Installed: (none)\n  Candidate: 2:1.24~2\n", (1, 24)),
        ("maven:\n  Candidate: 3.8.7-1\n", (3, 8)),
        ("golang-go:\n  Installed: (none)\n  Candidate: (none)\n", None),
        ("", None),
    ],
)
def test_debian_candidate_version_is_read_from_apt_cache_policy(policy: str, version: tuple[int, ...] | None) -> None:
    assert stack.debian_version(policy) == version


def test_missing_prerequisites_name_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_version_of", lambda cmd, pattern: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(stack, "postgres_bindir", lambda: None)
    monkeypatch.setattr(stack, "STORE_BACKEND", "sqlite")
    assert [m.package for m in stack.missing_prerequisites()] == [
        "openjdk-17-jre-headless",
        "maven",
        "golang-go",
        "chromium",
        "chromium-driver",
    ]
    monkeypatch.setattr(stack, "STORE_BACKEND", "postgresql")
    assert [m.package for m in stack.missing_prerequisites()][-1] == "postgresql"


def test_debian_go_older_than_needed_is_not_installed_but_named(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(stack, "_run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(stack, "_apt_candidate", lambda package: (1, 19))
    monkeypatch.setattr(stack, "_apt_has", lambda package: True)
    missing = [stack.Missing("Maven (mvn)", "maven"), stack.Missing("Go >= 1.24 (found none)", "golang-go")]
    stack._install_from_debian(missing)
    assert commands[-1][-1] == "maven"
    assert "golang-go" not in commands[-1]


def test_ferretdb_runs_on_the_selected_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "ferretdb_binary", lambda: Path("/bin/ferretdb"))
    monkeypatch.setattr(stack, "STORE_BACKEND", "sqlite")
    assert stack._ferretdb_command()[3:5] == ["-backend", "sqlite"]
    monkeypatch.setattr(stack, "STORE_BACKEND", "postgresql")
    command = stack._ferretdb_command()
    assert command[3:5] == ["-backend", "postgresql"]
    assert command[-1] == f"postgres://ferretdb@127.0.0.1:{stack.POSTGRES_PORT}/ferretdb"  # password: PGPASSFILE


def test_postgres_stays_durable() -> None:
    settings = stack.POSTGRES_SETTINGS
    assert settings["fsync"] == settings["synchronous_commit"] == settings["full_page_writes"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"


# ---------------------------------------------------------------- Kafka's listeners: KAFKA_SECURITY=sasl_ssl


def _prepared_kafka(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, security: str, *, node: int = 1, brokers: str = ""
) -> tuple[dict[str, str], Any]:
    """What `_kafka_prepare` writes for ``security`` (no Kafka is run: the format command is only recorded)."""
    monkeypatch.setenv("KAFKA_SECURITY", security)
    monkeypatch.setenv("KAFKA_BROKERS", brokers)
    monkeypatch.setattr(stack, "STATE", tmp_path)
    monkeypatch.setattr(stack, "DATA", tmp_path / "data")
    monkeypatch.setattr(stack, "KAFKA_TLS", tmp_path / "kafka" / "tls")
    monkeypatch.setattr(stack, "KAFKA_PASSWORD_FILE", tmp_path / "kafka" / "fulfil.password")
    monkeypatch.setattr(stack, "kafka_libs", lambda: tmp_path / "libs")
    monkeypatch.setattr(stack, "kafka_tls", lambda *a: None)
    formats: list[tuple[list[str], str]] = []

    def run(cmd: list[str], **_: Any) -> None:  # the args file exists while the format runs, then is deleted
        files = [Path(a[1:]) for a in cmd if a.startswith("@")]
        formats.append((cmd, "".join(f.read_text() for f in files)))

    monkeypatch.setattr(stack, "_run", run)
    stack._kafka_prepare(node)
    props = tmp_path / stack.broker_name(node) / "server.properties"
    lines = [ln.partition("=") for ln in props.read_text().splitlines() if "=" in ln and not ln.startswith("#")]
    return {k: v for k, _, v in lines}, (props, formats)


def test_secured_kafka_opens_only_the_sasl_ssl_listener_and_a_loopback_controller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf, (props, formats) = _prepared_kafka(monkeypatch, tmp_path, "sasl_ssl")

    listeners = {address: name for name, _, address in (ln.partition("://") for ln in conf["listeners"].split(","))}
    assert listeners == {"127.0.0.1:9093": "CONTROLLER", "127.0.0.1:9094": "SASL_SSL"}
    assert conf["advertised.listeners"] == "SASL_SSL://127.0.0.1:9094"  # the controller is not advertised
    assert conf["controller.listener.names"] == "CONTROLLER"
    assert conf["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert conf["inter.broker.listener.name"] == "SASL_SSL"
    assert conf["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert not [v for v in conf.values() if "9092" in v], "no PLAINTEXT listener, anywhere"
    password = stack.kafka_password()
    assert f'password="{password}"' in conf["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert props.stat().st_mode & 0o777 == 0o600  # it holds the broker's password
    # The SCRAM user is written at format time (no PLAINTEXT listener to create it through), from a file.
    [(cmd, args_file)] = formats
    assert f"SCRAM-SHA-512=[name=fulfil,password={password}]" in args_file
    assert not any(password in a for a in cmd), "the password must not be on the command line"
    assert not list((tmp_path / "kafka").glob("*.args")), "the args file is deleted"


def test_development_kafka_keeps_its_plaintext_listener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf, (_, formats) = _prepared_kafka(monkeypatch, tmp_path, "plaintext")

    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_SSL://127.0.0.1:9094"
    assert conf["inter.broker.listener.name"] == "PLAINTEXT"
    assert not any(a.startswith("@") for cmd, _ in formats for a in cmd)


def test_secured_kafka_is_ready_without_touching_the_plaintext_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY", "sasl_ssl")
    probed: list[int] = []

    def probe(port: int) -> bool:
        probed.append(port)
        return True

    monkeypatch.setattr(stack, "_port_open", probe)
    monkeypatch.setattr(stack, "_tls_answers", probe)
    assert stack.kafka_ready()
    assert set(probed) == {9094}


@pytest.mark.parametrize(
    ("security", "open_ports", "problem"),
    [
        ("sasl_ssl", {9092, 9093, 9094}, "PLAINTEXT listener open on 9092"),
        ("plaintext", {9093, 9094}, "the running Kafka is secured"),
        ("sasl_ssl", {9093, 9094}, None),
        ("plaintext", {9092, 9093, 9094}, None),
    ],
)
def test_a_running_kafka_in_the_other_mode_is_named_not_reused(
    monkeypatch: pytest.MonkeyPatch, security: str, open_ports: set[int], problem: str | None
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY", security)
    monkeypatch.setattr(stack, "_read_pid", lambda server: 4242)
    monkeypatch.setattr(stack, "_port_open", lambda port: port in open_ports)
    found = stack.kafka_mode_problem()
    assert (found is None) if problem is None else (problem in str(found))


def test_a_broker_of_a_three_broker_cluster_has_its_own_ports_the_three_voters_and_the_cluster_durability(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf, (_, formats) = _prepared_kafka(monkeypatch, tmp_path, "plaintext", node=2, brokers="3")

    assert conf["node.id"] == "2"
    assert conf["controller.quorum.voters"] == "1@127.0.0.1:9093,2@127.0.0.1:9103,3@127.0.0.1:9113"
    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:9102,CONTROLLER://127.0.0.1:9103,SASL_SSL://127.0.0.1:9104"
    assert conf["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9102,SASL_SSL://127.0.0.1:9104"
    assert conf["log.dirs"] == str(tmp_path / "data" / "kafka-2")
    assert (conf["default.replication.factor"], conf["min.insync.replicas"]) == ("3", "2")
    assert conf["offsets.topic.replication.factor"] == "3"
    assert conf["unclean.leader.election.enable"] == "false"
    [(cmd, _)] = formats
    assert any(a.endswith("kafka-2/server.properties") for a in cmd)
    assert stack.kafka_brokers_formatted() == 3
    monkeypatch.delenv("KAFKA_BROKERS")
    assert stack.kafka_brokers() == 3, "later commands (make chaos) know the cluster without KAFKA_BROKERS"
    assert stack.kafka_bootstrap() == "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112"
    assert stack.client_env() == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112"}
    assert [s.name for s in stack.brokers_wanted()] == ["kafka", "kafka-2", "kafka-3"]


def test_one_broker_is_the_default_and_its_properties_are_the_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf, _ = _prepared_kafka(monkeypatch, tmp_path, "plaintext")

    assert (conf["node.id"], conf["controller.quorum.voters"]) == ("1", "1@127.0.0.1:9093")
    assert conf["default.replication.factor"] == "1"
    assert stack.client_env() == {}
    assert [s.name for s in stack.brokers_wanted()] == ["kafka"]


@pytest.mark.parametrize("raw", ["2", "4", "three", "0"])
def test_a_cluster_is_one_broker_or_three(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", raw)
    with pytest.raises(stack.StackError, match="KAFKA_BROKERS must be 1 or 3"):
        stack.kafka_brokers()


def test_a_secured_cluster_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="KAFKA_SECURITY=sasl_ssl runs on one broker"):
        _prepared_kafka(monkeypatch, tmp_path, "sasl_ssl", node=1, brokers="3")


def test_data_formatted_for_one_broker_is_not_started_as_three(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _prepared_kafka(monkeypatch, tmp_path, "plaintext")
    (tmp_path / "data" / "kafka" / "meta.properties").write_text("node.id=1\n")

    monkeypatch.setenv("KAFKA_BROKERS", "3")
    problem = stack.kafka_cluster_problem()

    assert problem is not None
    assert "formatted for 1 broker(s), not 3" in problem
    assert "make clean" in problem
    monkeypatch.setenv("KAFKA_BROKERS", "1")
    assert stack.kafka_cluster_problem() is None


def test_a_second_broker_is_refused_on_a_one_broker_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="kafka-2 is a broker of a cluster, and this stack runs 1"):
        _prepared_kafka(monkeypatch, tmp_path, "plaintext", node=2)
