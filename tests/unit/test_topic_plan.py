"""The declared topic set (deploy/topics.yaml) as `fulfil topics apply` reads it, for one broker and a cluster."""

from __future__ import annotations

from tools.ops.paths import REPO
from tools.ops.topic_config import topic_plan

TOPICS = REPO / "deploy" / "topics.yaml"


def test_one_broker_gets_the_defaults_dead_letter_topics_included() -> None:
    plan = topic_plan(TOPICS)

    assert {t["replication_factor"] for t in plan} == {1}
    assert {t["config"]["min.insync.replicas"] for t in plan} == {"1"}
    assert {"order.events", "order.events.dlq"} <= {t["name"] for t in plan}


def test_a_cluster_gets_three_replicas_two_in_sync_and_no_unclean_election_on_every_topic() -> None:
    plan = topic_plan(TOPICS, cluster=True)

    assert {t["replication_factor"] for t in plan} == {3}
    assert {t["config"]["min.insync.replicas"] for t in plan} == {"2"}
    assert {t["config"]["unclean.leader.election.enable"] for t in plan} == {"false"}
    dlq = next(t for t in plan if t["name"] == "order.events.dlq")
    assert dlq["config"]["retention.ms"] == "2592000000", "the dead letters keep their own retention"
    assert [t["name"] for t in plan] == [t["name"] for t in topic_plan(TOPICS)]
