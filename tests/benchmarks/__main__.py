"""`python -m tests.benchmarks` (`make bench`): every benchmark, then one table of figure, value, target, verdict.

All run against the simulator on loopback on this machine; each comparison runs both sides in one run.
"""

from __future__ import annotations

import subprocess
import sys

from tests.benchmarks import bench_api, bench_pipeline, bench_profile, bench_proxy, bench_scale


def main() -> int:
    rows: list[tuple[str, str, str, str]] = []
    print("pipeline cost (one core) ...", flush=True)
    rows += bench_pipeline.main()
    print("CPU per API request: serve against a bare client, same simulator (~2 min) ...", flush=True)
    rows += bench_profile.main()
    print("API efficiency and freshness (4 workloads of 60 s + drain, stepscope and a naive poller side by side) ...",
          flush=True)  # fmt: skip
    rows += bench_api.main()
    print("proxy added latency and CPU (2,000 requests of each kind: direct, proxied, bare forwarder) ...", flush=True)
    rows += bench_proxy.main()
    print("scale: 10,000 concurrently active runs at a 10 s poll (~2 min) ...", flush=True)
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
