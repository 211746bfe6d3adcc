"""The commands: serve (the sidecar and its composition root), demo, inspect, backfill, and the docs generators."""
