"""A two-node local Ray cluster serving adapters that live only in S3 (run by
``test_two_nodes.py`` in a process of its own: one Ray per process).

Each node has its own home, so its own default disk tier (``~/.cache/loraq/adapters``),
and neither has an adapter folder. Prints one JSON line: per replica its node, the
distinct adapters it served, its downloads, and whether every answer was right.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from demo.tasks import expected_output
from producer.client import Producer
from producer.embedded import free_port
from workers import launch
from workers.settings import DEMO_DIR, WorkerSettings


def main(redis_url: str, source: str, names_json: str, work: str) -> None:
    names: dict[str, str] = json.loads(names_json)  # name -> demo adapter
    homes = [Path(work) / "node-a", Path(work) / "node-b"]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "env_vars": {"HOME": str(homes[0])}},
    )
    cluster.add_node(num_cpus=2, env_vars={"HOME": str(homes[1])})
    ray.init(address=cluster.address, log_to_driver=False)
    settings = WorkerSettings(
        redis_url=redis_url,
        prefix=f"loraqtest:twonodes{uuid.uuid4().hex[:8]}",
        app_name="twonodes",
        http_route_prefix="/twonodes",
        http_port=free_port(),
        metrics_export_port=free_port(),
        model=str(DEMO_DIR / "model"),
        adapters={},
        adapter_dir=None,
        adapter_source=source,
        num_model_replicas=2,
        max_model_replicas_per_node=1,
        max_adapters_per_replica=4,
        model_num_cpus=0.5,
        consumer_num_cpus=0.1,
        gateway_num_cpus=0.1,
        graceful_shutdown_timeout_s=5.0,
    )
    running = launch.deploy(settings)
    try:
        text = "abc de"
        jobs = [{"adapter": name, "prompt": text} for name in names for _ in range(4)]
        with Producer.from_settings(settings) as producer:
            ids = producer.submit_many(jobs)
            records = producer.wait_many(ids, timeout=400)
        served: dict[str, set[str]] = {}
        right = True
        for job_id, job in zip(ids, jobs, strict=True):
            record = records[job_id]
            result = record.result
            name = str(job["adapter"])
            right &= result is not None and result.text == expected_output(names[name], text)
            if result is not None and result.replica:
                served.setdefault(result.replica, set()).add(name)
        stats = asyncio.run(launch.replica_stats(running.model, 2))
        print(
            json.dumps(
                {
                    "right": right,
                    "replicas": {
                        replica: {
                            "pid": replica_stats["pid"],
                            "served": len(served.get(replica, ())),
                            "downloads": replica_stats["disk"]["downloads"],
                        }
                        for replica, replica_stats in stats.items()
                    },
                    "homes": [
                        len(list((home / ".cache/loraq/adapters/entries").glob("*")))
                        for home in homes
                    ],
                }
            ),
            flush=True,
        )
    finally:
        launch.shutdown(running)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
