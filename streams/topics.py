"""``copulse topics create``: the four input topics, the dead-letter topic, the late-event topic and the
compacted state changelog (``<app_id>-state-changelog``, one partition per source partition).

Idempotent: topics that exist are left alone. Partition counts are never changed: the message key is the
consumer_id, so adding partitions would move consumers to other partitions and split their per-partition
state. If an existing input topic has another partition count than ``COPULSE_PARTITIONS`` a warning says
so (the existing count is what the pipeline then uses).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from streams.state_store import CHANGELOG_CONFIGS, changelog_topic

log = logging.getLogger(__name__)

#: topic configs: dead letters and late events are kept longer, for inspection and replay
DLQ_CONFIGS = {"retention.ms": str(14 * 86400 * 1000)}


def topic_names(settings: Any) -> list[str]:
    """The 7 topics copulse needs: input topics first, the state changelog last."""
    return [
        *settings.source_topics.values(),
        settings.topic_dlq,
        settings.topic_late,
        changelog_topic(settings.app_id),
    ]


def _admin(settings: Any, timeout_ms: int):
    from kafka.admin import KafkaAdminClient

    config = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": "copulse-topics",
        "request_timeout_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,  # kafka-python >= 3 only
    }
    return KafkaAdminClient(**{k: v for k, v in config.items() if k in KafkaAdminClient.DEFAULT_CONFIG})


def partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """topic -> partition count for those of ``names`` that exist."""
    existing = set(admin.list_topics())
    wanted = [n for n in names if n in existing]
    counts: dict[str, int] = {}
    for attempt in range(5):  # a topic created a moment ago may briefly describe with an error
        for desc in admin.describe_topics(wanted) if wanted else ():
            if desc.get("error_code", 0) == 0 and desc.get("partitions"):
                counts[desc.get("name") or desc.get("topic")] = len(desc["partitions"])
        wanted = [n for n in wanted if n not in counts]
        if not wanted:
            break
        time.sleep(0.2 * (attempt + 1))
    return counts


def ensure_topics(settings: Any, timeout_s: float = 30.0) -> list[str]:
    """Create the missing ones of the 7 topics; return the names created by this call ([] if all existed).

    New topics get ``settings.partitions`` partitions and ``settings.replication_factor`` replicas; the
    call returns once they are visible in the cluster metadata. Existing topics are left alone; an input
    topic whose partition count differs from ``settings.partitions`` is logged as a warning.
    """
    from kafka.errors import TopicAlreadyExistsError

    names = topic_names(settings)[:-1]  # the changelog is made by _ensure_changelog
    inputs = set(settings.source_topics.values())
    admin = _admin(settings, int(timeout_s * 1000))
    try:
        counts = partition_counts(admin, names)
        for name, count in counts.items():
            if count != settings.partitions:
                message = (
                    "topic %s exists with %d partitions but COPULSE_PARTITIONS=%d; copulse never changes "
                    "partition counts (keys would move between partitions). Using the existing %d partitions; "
                    "set COPULSE_PARTITIONS=%d to silence this, or delete and recreate the topic."
                )
                args = (name, count, settings.partitions, count, count)
                if name in inputs:
                    log.warning(message, *args)
                else:
                    log.debug(message, *args)
        missing = [n for n in names if n not in counts]
        created: list[str] = []
        for name in missing:
            spec = {
                "num_partitions": settings.partitions,
                "replication_factor": settings.replication_factor,
            }
            if name not in inputs:
                spec["configs"] = dict(DLQ_CONFIGS)
            try:
                admin.create_topics({name: spec}, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
            except TopicAlreadyExistsError:
                log.info("topic %s was created concurrently by someone else", name)
                continue
            created.append(name)
            log.info(
                "created topic %s (%d partitions, replication factor %d)",
                name,
                settings.partitions,
                settings.replication_factor,
            )
        if missing:
            _wait_visible(admin, missing, timeout_s)
        source_partitions = partition_counts(admin, names[:1]).get(names[0], settings.partitions)
        if _ensure_changelog(admin, settings.app_id, source_partitions, settings.replication_factor, timeout_s):
            created.append(changelog_topic(settings.app_id))
        return created
    finally:
        admin.close()


def _ensure_changelog(admin: Any, app_id: str, partitions: int, replication_factor: int, timeout_s: float) -> bool:
    """Create the state changelog (compacted, as many partitions as the source topics) or bring an existing
    one's configs up to date (copulse owns every config of that topic). True when it was created."""
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import TopicAlreadyExistsError

    name = changelog_topic(app_id)
    count = partition_counts(admin, [name]).get(name)
    if count is None:
        try:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": replication_factor,
                                        "configs": dict(CHANGELOG_CONFIGS)}},
                                timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
            _wait_visible(admin, [name], timeout_s)
            log.info("created topic %s (%d partitions, compacted)", name, partitions)
            return True
        except TopicAlreadyExistsError:
            count = partition_counts(admin, [name]).get(name)
    if count is not None and count != partitions:
        raise RuntimeError(f"state changelog {name} has {count} partitions but the source topics have {partitions}; "
                           f"the state of partition p must live in changelog partition p. Delete {name} (the state "
                           "is rebuilt from the source topics) or recreate the source topics.")
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(CHANGELOG_CONFIGS))])
    return False


def _wait_visible(admin: Any, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = partition_counts(admin, names)
        if all(n in counts for n in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(set(names) - set(counts))} not visible after {timeout_s:.0f} s")
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after this long (default 30)"
    )


def run(args, settings) -> int:
    from kafka.errors import KafkaError

    try:
        created = ensure_topics(settings, timeout_s=args.timeout)
        admin = _admin(settings, int(args.timeout * 1000))
        try:
            counts = partition_counts(admin, topic_names(settings))
        finally:
            admin.close()
    except (KafkaError, TimeoutError, OSError) as exc:
        print(
            f"copulse topics create: Kafka at {settings.kafka_bootstrap_servers} failed: "
            f"{type(exc).__name__}: {exc}. Is it running (`make up`)? Is COPULSE_KAFKA_BOOTSTRAP_SERVERS right?",
            file=sys.stderr,
        )
        return 1
    for name in topic_names(settings):
        state = "created" if name in created else "exists"
        print(f"{name:<32} {counts.get(name, '?'):>3} partitions  {state}")
    return 0
