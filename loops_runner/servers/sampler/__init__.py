"""The sampler server: batched generation from a base model and LoRA adapters.

Layout (one job per module):

* ``server.py``     - ``serve(args)``: build the app, start and stop the engine.
* ``routes.py``     - ``/sample`` and the sampler's own routes (parse, validate, hand over).
* ``openai_routes.py`` - ``/v1/completions`` and ``/v1/chat/completions``.
* ``protocol.py``   - wire bodies -> engine jobs (limits), engine output -> wire bodies.
* ``adapters.py``   - which weights serve a request: base, live adapter per run, pinned.
* ``engine.py``     - the engine interface and the PyTorch continuous-batching engine.
* ``kv_cache.py``, ``lora.py``, ``sampling.py``, ``detokenize.py``, ``constraints.py`` -
  the engine's parts.
"""
