"""Names of files in run and sweep dirs that a light reader (the report) needs.

Kept apart from their writers (runner.app, runner.sweep) so reading them
imports neither the client stack nor Hydra.
"""

RESOLVED_CONFIG_FILE = "config.resolved.yaml"  # the composed config of a run
SWEEP_FILE = "sweep.jsonl"  # a line per finished sweep job
