"""The runtime: runs a compiled Plan on anyio (scheduler, executors, events, results)."""
