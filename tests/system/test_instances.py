"""The portal's record, read without the portal: forged, stale and garbled files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cfn.settings import Settings
from cfn.system.instances import (
    Instance,
    instance_file,
    log_file,
    portal_daemon,
    read_instance,
    redis_daemon,
    running_instance,
)


def test_paths_are_the_portals_and_redis_files(tmp_path: Path) -> None:
    cfg = Settings(cfn_state_dir=tmp_path / ".cfn")
    assert instance_file(cfg) == tmp_path / ".cfn" / "portal" / "instance.json"
    assert log_file(cfg) == tmp_path / ".cfn" / "portal" / "portal.log"
    redis = redis_daemon(cfg.state_dir)
    assert (redis.record_file.name, redis.log_file.name) == ("instance.json", "redis.log")
    assert redis.pid_file == cfg.state_dir / "redis" / "redis.pid"


def test_a_record_is_trusted_only_while_its_process_lives_and_answers(tmp_path: Path) -> None:
    cfg = Settings(cfn_state_dir=tmp_path / ".cfn")
    assert read_instance(cfg) is None and running_instance(cfg) is None
    path = instance_file(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_instance(cfg) is None
    # As tests and older versions write it: no start time.
    anywhere = "0.0.0.0"  # noqa: S104 (a recorded host, not a bind)
    path.write_text(json.dumps({"pid": os.getpid(), "host": anywhere, "port": 1}))
    assert read_instance(cfg) == Instance(os.getpid(), anywhere, 1)
    assert read_instance(cfg).url == "http://127.0.0.1:1"  # type: ignore[union-attr]
    assert running_instance(cfg) is None  # alive, but nothing answers on port 1
    portal_daemon(cfg.state_dir).write_record({"pid": os.getpid(), "pid_start": 1, "host": "h",
                                               "port": 1})  # fmt: skip
    assert running_instance(cfg) is None  # another process than the one recorded
