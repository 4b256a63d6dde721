"""loops-runner: config-driven LoRA post-training on a Loops-style service.

Importing this package is cheap on purpose: no torch, no transformers. The
servers import the heavy engines when they start.
"""

__version__ = "0.1.0"
