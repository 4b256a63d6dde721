"""loops-runner: config-driven LoRA post-training on a Loops-style service.

Importing this package is cheap on purpose: no torch, no transformers. The
servers import the heavy engines when they start.

Comments that cite "spec N.M" mean section N.M of the wire protocol,
``docs/spec/loops-protocol.md``; the client API is ``docs/spec/service-client.md``.
"""

__version__ = "0.1.0"
