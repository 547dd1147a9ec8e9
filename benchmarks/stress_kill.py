"""SIGKILL stress: a writer process saving in a loop is killed at random moments, N times.

After every kill it checks what tests/test_crash.py checks (only complete versions
listed, each bit-exact; the newest returned save listed; a new save works; gc
leaves no leftover) and, at the end, that ``repair`` lists every committed
version intact. Prints the tally as one JSON document.

    python benchmarks/stress_kill.py --kills 200                  # local disk
    python benchmarks/stress_kill.py --kills 200 --backend s3     # S3 protocol via moto on 127.0.0.1

Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _writer import Tally, Zygote, check_after_kill, check_repair  # noqa: E402

from torchckpt import CheckpointManager  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--backend", choices=["local", "s3"], default="local")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=None, help="seconds; default 0.15 local, 0.8 s3")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="torchckpt-stress-")
    server = None
    storage_options: dict = {}
    if args.backend == "s3":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import logging

        import boto3
        from moto_s3 import start_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request

        server, endpoint = start_server()
        bucket = f"stress-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        root = f"s3://{bucket}/run"
        storage_options = {"client_kwargs": {"endpoint_url": endpoint}}
    else:
        root = os.path.join(work, "ckpt")
    max_delay = args.max_delay or (0.8 if args.backend == "s3" else 0.15)
    zygote = Zygote(stderr_path=os.path.join(work, "writer-stderr.txt"))
    mgr = CheckpointManager(root, storage_options=storage_options or None)
    tally = Tally()
    listed_at_end = None
    started = time.time()
    try:
        for i in range(args.kills):
            progress = os.path.join(work, f"progress-{i}.txt")
            job = {
                "kind": "saves",
                "root": root,
                "storage_options": storage_options,
                "start": i * 1000,
                "keep_last": rng.choice([None, 2, 3]),
                "progress": progress,
            }
            pid = zygote.fork(job)
            time.sleep(rng.uniform(0.0, max_delay))
            status = zygote.kill(pid)
            tally.kills += 1
            if status != -9:
                tally.failures.append(f"kill {i}: writer exited with {status} before the kill")
                continue
            try:
                check_after_kill(mgr, progress, tally, step=i * 1000 + 999)
            except Exception as exc:  # keep going: the tally reports every failure
                tally.failures.append(f"kill {i}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            if (i + 1) % 25 == 0:
                print(f"... {i + 1} kills, {len(tally.failures)} failures", file=sys.stderr, flush=True)
        try:
            check_repair(mgr, tally)
            listed_at_end = len(mgr.list())
        except Exception as exc:
            tally.failures.append(f"repair: {type(exc).__name__}: {exc}")
    finally:
        zygote.close()
        if server is not None:
            server.stop()
    result = {
        "backend": args.backend,
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        **tally.as_dict(),
        "versions_listed_at_end": listed_at_end,
    }
    print(json.dumps(result, indent=1))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
