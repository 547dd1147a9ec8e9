"""R6: what one async save costs a real training loop, vs a sync save (same run).

    python benchmarks/async_loop.py --width 3072 --layers 6 --reps 3

A loop of forward, backward, Adam step on an MLP. Per repetition, in alternating order:
* sync: the time of ``save(blocking=True)`` between two iterations;
* async: ``save(blocking=False)`` between two iterations, then iterations until the
  save committed. The loss (the issue's definition) is the save call plus every wait
  it causes later: the optimizer step pre-hook waiting for the background snapshot
  (timed inside the hook). Shown as well, for information: the wall-clock of those
  iterations beyond their median time without a save in flight (the background
  write's CPU competing with training on a 2-core machine; noisy).
Modes: the default async save (the whole state copied before ``save`` returns) and
``overlap_snapshot=True`` (optimizer state copied in the background; the next step waits).
Target: loss <= 5% of the sync save.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import fmt, human, machine  # noqa: E402

from torchckpt import CheckpointManager  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(args.layers):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.width)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        model(x).pow(2).mean().backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(2):
        step()  # Adam state exists from here on
    nbytes = sum(p.numel() * 4 * 3 for p in model.parameters())
    print("machine:", machine(), f"torch threads {torch.get_num_threads()}", flush=True)
    base = [step() for _ in range(5)]
    print(f"state {human(nbytes)} (model + Adam); step {fmt(base)}", flush=True)
    work = tempfile.mkdtemp(prefix="torchckpt-r6-", dir=args.dir)
    managers = {
        "sync": CheckpointManager(os.path.join(work, "sync")),
        "async": CheckpointManager(os.path.join(work, "async")),
        "overlap": CheckpointManager(os.path.join(work, "overlap"), overlap_snapshot=True),
    }
    results: dict[str, list[float]] = {k: [] for k in managers}
    contention: dict[str, list[float]] = {k: [] for k in managers}
    blocked: dict[str, list[float]] = {k: [] for k in managers}
    steps_in_flight: dict[str, list[int]] = {k: [] for k in managers}
    n = 100
    try:
        for rep in range(args.reps):
            order = list(managers) if rep % 2 == 0 else list(reversed(managers))
            for name in order:
                mgr = managers[name]
                base.append(step())
                n += 1
                t0 = time.perf_counter()
                if name == "sync":
                    mgr.save(n, model=model, optimizer=opt)
                    results[name].append(time.perf_counter() - t0)
                    blocked[name].append(results[name][-1])
                else:
                    fut = mgr.save(n, blocking=False, model=model, optimizer=opt)
                    blocked[name].append(time.perf_counter() - t0)
                    saver = mgr._saver
                    assert saver is not None
                    waited = [0.0]
                    plain_wait = type(saver).wait_snapshot

                    def timed_wait(
                        _saver: object = saver, _plain: object = plain_wait, _waited: list[float] = waited
                    ) -> None:
                        w0 = time.perf_counter()
                        _plain(_saver)  # type: ignore[operator]
                        _waited[0] += time.perf_counter() - w0

                    saver.wait_snapshot = timed_wait  # type: ignore[method-assign]
                    k = 0
                    while True:
                        step()
                        k += 1
                        if fut.done():
                            break
                    fut.result()
                    del saver.wait_snapshot
                    spent = time.perf_counter() - t0
                    results[name].append(blocked[name][-1] + waited[0])
                    contention[name].append(spent - k * statistics.median(base))
                    steps_in_flight[name].append(k)
                for v in mgr.list()[:-1]:
                    mgr.delete(v)
    finally:
        for mgr in managers.values():
            mgr.close()
        shutil.rmtree(work, ignore_errors=True)
    sync = statistics.median(results["sync"])
    print(
        f"\ncommand: `python benchmarks/async_loop.py {' '.join(sys.argv[1:])}`; state {human(nbytes)}, "
        f"step {statistics.median(base):.3f} s median [{min(base):.3f}-{max(base):.3f}]\n"
    )
    print(
        "| mode | caller blocked in save | lost: save call + waits it caused | lost / sync save | target | met "
        "| steps in flight | (info) wall-clock beyond median steps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| sync save | {fmt(blocked['sync'])} | {fmt(results['sync'])} | 100% | - | - | - | - |")
    for name in ("async", "overlap"):
        lost = statistics.median(results[name])
        label = "async (copy, then write)" if name == "async" else "async, overlap_snapshot=True"
        print(
            f"| {label} | {fmt(blocked[name])} | {fmt(results[name])} | {lost / sync * 100:.1f}% | <= 5% | "
            f"{'yes' if lost <= 0.05 * sync else 'no'} | {steps_in_flight[name]} | {fmt(contention[name])} |"
        )


if __name__ == "__main__":
    main()
