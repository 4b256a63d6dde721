"""Files under the data home, one module per concern.

* ``layout``: where runs keep their files, and how ``bt://`` paths map there.
* ``atomic``: writes that readers see whole or not at all (JSON files, folders).
* ``weight_sync``: the live pointer of a run and its paired sampler's record
  (the trainer -> sampler contract of docs/weight-sync.md).
* ``manifests``: checkpoint manifests (``checkpoint.json``), their API ids and
  the integrity checks that refuse a damaged checkpoint.

The ``bt://`` grammar itself is the wire's (``loops_runner.wire.paths``): the
client builds the same strings.
"""
