"""Topic settings as declared in deploy/topics.yaml, applied incrementally and never less durable (``fulfil topics
apply``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import topics as topic_names
from shared.kafka import new_admin
from tools.ops.settings import kafka_settings
from tools.ops.topic_log import Kafka


def topic_plan(path: Path, *, cluster: bool = False) -> list[dict[str, Any]]:
    """The topics the file declares, DLQs included, each with partitions, replication factor and config; with
    ``cluster``, the file's ``cluster`` section (replication and its guarantees) over its defaults."""
    spec = yaml.safe_load(path.read_text())
    defaults = spec.get("defaults", {})
    if cluster:
        override = spec.get("cluster") or {}
        if not override:
            raise ValueError(f"{path} has no cluster section")
        defaults = {
            **defaults,
            **{k: v for k, v in override.items() if k != "config"},
            "config": {**defaults.get("config", {}), **override.get("config", {})},
        }
    dlq = spec.get("dead_letter", {})
    plan = []
    for t in spec["topics"]:
        base = {
            "name": t["name"],
            "partitions": int(t.get("partitions", defaults.get("partitions", 3))),
            "replication_factor": int(t.get("replication_factor", defaults.get("replication_factor", 1))),
            "config": {**defaults.get("config", {}), **t.get("config", {})},
        }
        plan.append(base)
        plan.append(
            {
                **base,
                "name": base["name"] + dlq.get("suffix", topic_names.DLQ_SUFFIX),
                "config": {**base["config"], **dlq.get("config", {})},
            }
        )
    return plan


# Settings whose lower value loses data or weakens acknowledgements: `topics apply` never lowers them.
NEVER_LOWERED = ("min.insync.replicas", "retention.ms", "retention.bytes", "unclean.leader.election.enable")
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself (not a broker default)


def _durability(name: str, value: str) -> float:
    """A comparable measure of how durable a setting's value is (higher = keeps more, acknowledges safer)."""
    if name == "unclean.leader.election.enable":
        return 0.0 if value.strip().lower() == "true" else 1.0
    number = int(value)
    return float("inf") if number < 0 and name.startswith("retention") else float(number)


def merge_topic_config(
    effective: dict[str, str], overrides: dict[str, str], desired: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The full override set to send for one topic, and notes on what was kept.

    Kafka's AlterConfigs (aiokafka has no incremental variant) replaces a topic's overrides with the set it is
    given, so the set starts from the topic's current overrides -- a setting the file does not name is kept --
    and takes the file's values, except that a durability setting is never made weaker than it is now.
    """
    merged = dict(overrides)
    notes: list[str] = []
    for name, value in desired.items():
        value = str(value)
        current = effective.get(name)
        if current is not None and name in NEVER_LOWERED and _durability(name, value) < _durability(name, current):
            notes.append(f"kept {name}={current} (the file says {value}; durability is never lowered)")
            continue
        merged[name] = value
    return merged, notes


@dataclass
class TopicChanges:
    create: list[dict[str, Any]] = field(default_factory=list)
    grow: dict[str, int] = field(default_factory=dict)
    alter: dict[str, dict[str, str]] = field(default_factory=dict)
    diffs: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.grow or self.alter)

    def lines(self) -> list[str]:
        out = [
            f"create {t['name']} ({t['partitions']} partitions, replication {t['replication_factor']})"
            for t in self.create
        ]
        out += [f"grow {name} to {n} partitions" for name, n in self.grow.items()]
        out += [f"configure {name}: {', '.join(self.diffs[name])}" for name in self.alter]
        return out


async def plan_topics(kafka: Kafka, plan: list[dict[str, Any]]) -> TopicChanges:
    """What ``topics apply`` would change: missing topics, partitions to add, settings to alter (and keep)."""
    admin = new_admin(kafka_settings(kafka), request_timeout_ms=10_000)
    await admin.start()
    changes = TopicChanges()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics() if t.get("error_code", 0) == 0}
        existing = [t for t in plan if t["name"] in described]
        changes.create = [t for t in plan if t["name"] not in described]
        configs: dict[str, list[dict[str, Any]]] = {}
        if existing:
            for resp in await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t["name"]) for t in existing]
            ):
                for res in resp.to_object()["resources"]:
                    if res["error_code"]:
                        raise RuntimeError(
                            f"cannot read the settings of {res['resource_name']}: {res['error_message']}"
                        )
                    configs[res["resource_name"]] = res["config_entries"]
        for t in existing:
            parts = described[t["name"]]["partitions"]
            if len(parts) < t["partitions"]:
                changes.grow[t["name"]] = t["partitions"]
            replicas = len(parts[0]["replicas"]) if parts else 0
            if replicas > t["replication_factor"]:
                changes.notes.append(
                    f"kept {t['name']} replication {replicas} (the file says {t['replication_factor']})"
                )
            elif replicas < t["replication_factor"]:
                changes.notes.append(
                    f"{t['name']} has replication {replicas}, the file says {t['replication_factor']}: "
                    "raising it needs a partition reassignment (kafka-reassign-partitions), not done here"
                )
            entries = configs.get(t["name"], [])
            effective = {e["config_names"]: e["config_value"] for e in entries if e["config_value"] is not None}
            overrides = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e.get("config_source") == DYNAMIC_TOPIC_CONFIG and e["config_value"] is not None
            }
            merged, notes = merge_topic_config(effective, overrides, {k: str(v) for k, v in t["config"].items()})
            changes.notes += [f"{t['name']}: {n}" for n in notes]
            if merged != overrides:
                changes.alter[t["name"]] = merged
                changes.diffs[t["name"]] = [
                    f"{k} {effective.get(k, '(default)')} -> {v}" for k, v in merged.items() if overrides.get(k) != v
                ]
    finally:
        await admin.close()
    return changes


async def apply_topics(kafka: Kafka, changes: TopicChanges) -> None:
    admin = new_admin(kafka_settings(kafka), request_timeout_ms=10_000)
    await admin.start()
    try:
        if changes.create:
            await admin.create_topics(
                [
                    NewTopic(t["name"], t["partitions"], t["replication_factor"], topic_configs=t["config"])
                    for t in changes.create
                ]
            )
        if changes.grow:
            await admin.create_partitions({name: NewPartitions(n) for name, n in changes.grow.items()})
        if changes.alter:
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs=c) for name, c in changes.alter.items()]
            )
            for resp in responses:
                for res in resp.to_object().get("resources", []):
                    if res["error_code"]:
                        raise RuntimeError(f"altering {res['resource_name']} failed: {res['error_message']}")
    finally:
        await admin.close()
