"""Serving on a server: queries, dynamic batching, the server's shared resources (host CPU, PCIe switch tree,
cards) as a discrete-event simulation over the engine's per-batch costs, and MLPerf's offline and server
scenarios (`serve_workload`)."""
