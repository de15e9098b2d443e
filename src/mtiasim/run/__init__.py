"""The `run` application: build (or load) a workload, compile it, run a batch, report (`run_workload`)."""
