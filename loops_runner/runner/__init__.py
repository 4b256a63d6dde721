"""The runner: config schema, backends, recipe loading, run context, metrics, resume."""
