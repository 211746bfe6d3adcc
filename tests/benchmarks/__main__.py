"""`python -m tests.benchmarks` (`make bench`): every benchmark, then one table of figure, value, target, verdict.

All run against the simulator on loopback on this machine; each comparison runs both sides in one run.
"""

from __future__ import annotations

import subprocess
import sys

from tests.benchmarks import bench_api, bench_pipeline, bench_proxy, bench_scale


def main() -> int:
    rows: list[tuple[str, str, str, str]] = []
    print("pipeline cost (one core) ...", flush=True)
    rows += bench_pipeline.main()
    print("API efficiency and freshness (60 s, stepscope and a naive poller side by side) ...", flush=True)
    rows += bench_api.main()
    print("proxy added latency (2,000 requests of each kind, direct and proxied alternately) ...", flush=True)
    rows += bench_proxy.main()
    print("scale: 10,000 concurrently active runs (~3 min) ...", flush=True)
    rows += bench_scale.main()
    print("simulator throughput ...", flush=True)
    # Its own process: it pins itself to a core and spawns the simulator.
    subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_simulator"], check=False)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':<40}  {'target':<16}  verdict")
    for figure, value, target, verdict in rows:
        print(f"{figure:<{width}}  {value:<40}  {target:<16}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
