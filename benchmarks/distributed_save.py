"""Time a 2-rank sharded save (DCP) against a single-process save of the same state.

    python benchmarks/distributed_save.py [--mb 256] [--repeat 3] [--root DIR] [--world 2]

The state: an MLP of ``--layers`` square Linear layers (float32) plus Adam's two
moments, ~``--mb`` MB in total. The ranks (gloo, CPU) hold their weights as
DTensors sharded on dim 0 over a 1-D mesh and save with every rank writing its
own shard; the time is the slowest rank's, from a barrier to the committed
``CheckpointInfo``. Between those saves, rank 0 saves the same state unsharded the
usual way (one ``state.pt``) while the other ranks wait, so both see the same
machine load. For reference, a single process also saves it through DCP
(``distributed=True`` without a process group). Each timing is the median of
``--repeat`` saves (retention keeps one version so the disk does not fill up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torchckpt import CheckpointManager, RetentionPolicy


def build(mb: float, layers: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    # weights + 2 Adam moments = 3 copies of the parameters
    width = int(math.sqrt(mb * 1e6 / 4 / 3 / layers))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()


def state_mb(model: nn.Module) -> float:
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


def time_single(root: str, mb: float, layers: int, repeat: int, distributed: bool) -> float:
    model, opt = build(mb, layers)
    step(model, opt)
    mgr = CheckpointManager(root, retention=RetentionPolicy(keep_last=1), distributed=distributed or None)
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        mgr.save(i, model=model, optimizer=opt)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rank(rank: int, world: int, init: str, root: str, mb: float, layers: int, repeat: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_module, distribute_tensor

    torch.set_num_threads(1)
    if os.environ.get("BENCH_PHASES"):  # per-phase timings of each rank's save
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("torchckpt.distributed").setLevel(logging.DEBUG)
    dist.init_process_group(
        "gloo", init_method=f"file://{init}", rank=rank, world_size=world, timeout=timedelta(minutes=5)
    )
    try:
        mesh = init_device_mesh("cpu", (world,))
        model, _ = build(mb, layers)

        def partition(name: str, module: nn.Module, m: Any) -> None:
            for pname, p in list(module.named_parameters(recurse=False)):
                module.register_parameter(pname, nn.Parameter(distribute_tensor(p.data, m, [Shard(0)])))

        model = distribute_module(model, mesh, partition)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step(model, opt)
        mgr = CheckpointManager(os.path.join(root, "ranks"), retention=RetentionPolicy(keep_last=1))
        if rank == 0:  # the same state, unsharded, saved by this one process (rank 1 waits meanwhile)
            full_model, full_opt = build(mb, layers)
            step(full_model, full_opt)
            single = CheckpointManager(
                os.path.join(root, "single"), retention=RetentionPolicy(keep_last=1), distributed=False
            )
        times, single_times, blocked, background = [], [], [], []
        amgr = CheckpointManager(os.path.join(root, "ranks-async"), retention=RetentionPolicy(keep_last=1))
        for i in range(repeat):  # interleaved, so that both see the same machine load
            dist.barrier()
            if rank == 0:
                t0 = time.perf_counter()
                single.save(i, model=full_model, optimizer=full_opt)
                single_times.append(time.perf_counter() - t0)
            dist.barrier()
            t0 = time.perf_counter()
            mgr.save(i, model=model, optimizer=opt)
            elapsed = torch.tensor([time.perf_counter() - t0])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times.append(float(elapsed))
            dist.barrier()  # blocking=False: the caller's block (staging) and the whole background save
            t0 = time.perf_counter()
            fut = amgr.save(i, blocking=False, model=model, optimizer=opt)
            took = [time.perf_counter() - t0]
            fut.result()
            took.append(time.perf_counter() - t0)
            both = torch.tensor(took)
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            blocked.append(float(both[0]))
            background.append(float(both[1]))
        if rank == 0:
            with open(out, "w") as f:
                json.dump(
                    {
                        "median": statistics.median(times),
                        "single": statistics.median(single_times),
                        "files": sorted(mgr.latest().files),
                        "blocked": blocked,
                        "async_total": background,
                        "sync": times,
                    },
                    f,
                )
        amgr.close()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip teardown: a process-group thread still joinable at exit can abort the process


def time_ranks(root: str, world: int, mb: float, layers: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_rank, args=(world, os.path.join(tmp, "init"), root, mb, layers, repeat, out), nprocs=world)
        with open(out) as f:
            res: dict[str, Any] = json.load(f)
    return res


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s [{min(values):.3f}-{max(values):.3f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=256.0, help="state size (weights + Adam moments), MB")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--root", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.root) as base:
        model, _ = build(args.mb, args.layers)
        print(
            f"state: {state_mb(model):.0f} MB ({args.layers} layers), torch {torch.__version__}, "
            f"{os.cpu_count()} CPU(s), root {base}"
        )
        res = time_ranks(base, args.world, args.mb, args.layers, args.repeat)
        ranks, single, files = res["median"], res["single"], res["files"]
        single_dcp = time_single(os.path.join(base, "single-dcp"), args.mb, args.layers, args.repeat, True)
        mb = state_mb(model)
        print(f"1 process, state.pt:          {single:7.3f} s  ({mb / single:6.0f} MB/s)")
        print(f"1 process, DCP:               {single_dcp:7.3f} s  ({mb / single_dcp:6.0f} MB/s)")
        print(
            f"{args.world} ranks, DCP (sharded):     {ranks:7.3f} s  ({mb / ranks:6.0f} MB/s)"
            f"  files: {', '.join(files)}"
        )
        print(
            f"ratio {args.world}-rank / 1-process state.pt: {ranks / single:.2f}x; "
            f"{args.world}-rank / 1-process DCP: {ranks / single_dcp:.2f}x"
        )
        blocked = statistics.median(res["blocked"])
        print(
            f"{args.world} ranks, DCP, blocking=False: caller blocked {_fmt(res['blocked'])} (slowest rank), "
            f"whole save {_fmt(res['async_total'])}; sync sharded save {_fmt(res['sync'])}; "
            f"blocked / sync = {blocked / statistics.median(res['sync']) * 100:.0f}%"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
