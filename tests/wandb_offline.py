"""Read back an offline W&B run in tests, without the W&B server (wandb keeps no Python reader of
its ``.wandb`` transaction logs, and ``files/wandb-summary.json`` is not written offline)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any


def _records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    data, block, out, parts = path.read_bytes(), 32768, [], []
    if data[:4] != b":W&B":
        raise ValueError(f"not a W&B run file: {path}")
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            out.append(b"".join(parts))
            parts = []
        elif kind == 0:
            break
    return out


def read_offline_run(run_dir: Path, wait_s: float = 15.0) -> dict[str, Any]:
    """Read back a job's offline W&B run: ``{"summary", "config", "group", "name", "id", "finished"}``.

    For tests and quick checks without the W&B server (0.31 keeps no Python reader of its ``.wandb``
    files, and ``files/wandb-summary.json`` is not written offline). ``wandb-core`` may still be
    writing the file when ``run.finish()`` returns, so this waits up to ``wait_s`` for the exit record.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if not files:
        raise ValueError(f"no offline W&B run under {Path(run_dir) / 'wandb'}")
    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for raw in _records(files[-1]):
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except DecodeError:
                break
            records.append(rec)
        finished = any(r.WhichOneof("record_type") == "exit" for r in records)
        if finished or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out: dict[str, Any] = {
        "summary": {},
        "config": {},
        "group": None,
        "name": None,
        "id": None,
        "finished": finished,
    }
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(group=rec.run.run_group, name=rec.run.display_name, id=rec.run.run_id)
            items = [("config", i) for i in rec.run.config.update] + [
                ("summary", i) for i in rec.run.summary.update
            ]
        elif kind in ("config", "summary"):
            items = [(kind, i) for i in getattr(rec, kind).update]
        else:
            continue
        for where, item in items:
            key = item.key or ".".join(item.nested_key)
            out[where][key] = json.loads(item.value_json)
    return out
