"""Development and test tooling (`pero_worker.dev`): local services, the demo, helpers of tests and benchmarks.

Nothing here is imported by the daemons or the operator tools.
"""
