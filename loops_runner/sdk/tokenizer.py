"""Client-side tokenizers, loaded once per model and cached.

``base_model`` is a local directory or a Hugging Face id (optionally pinned
by a ``hf://org/repo@rev`` base checkpoint). The client knows no local model
names: a control plane answers with the directory it resolved a name to, and
a caller that talks to servers directly resolves its own names (the runner
does, through ``loops_runner.models.registry``). transformers is imported
only when a tokenizer is first asked for; remote code is never trusted.
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


def tokenizer_source(base_model: str, base_checkpoint: str | None = None) -> tuple[str, str | None]:
    """(what to load, revision): a custom base checkpoint's own files win."""
    if base_checkpoint:
        repo, _, revision = base_checkpoint.removeprefix("hf://").partition("@")
        return repo, revision or None
    return base_model, None


def _load_path(name: str) -> str:
    """Directories as absolute paths; hub ids unchanged."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


# Tokenizer classes for which AutoTokenizer resolves to the plain fast tokenizer.
# A local folder that names one is loaded with that class directly: the same
# object, without AutoTokenizer's config machinery, which imports torch (about
# 2 of the 3 CPU-seconds a runner process spent loading tiny's tokenizer).
_PLAIN_FAST_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})


def _is_plain_fast_folder(path: str) -> bool:
    folder = Path(path)
    config = folder / "tokenizer_config.json"
    if not (config.is_file() and (folder / "tokenizer.json").is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in _PLAIN_FAST_CLASSES
    except (OSError, ValueError):
        return False


_ADVICE_ENV = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


def transformers_module() -> Any:
    """``transformers``, imported without its "PyTorch was not found" advice.

    A client without torch is the intended cloud-only install (tokenizers
    only), so the advice is noise there. Only the import is quietened; the
    user's own setting of the variable is left as it was.
    """
    if "transformers" not in sys.modules:
        previous = os.environ.get(_ADVICE_ENV)
        os.environ[_ADVICE_ENV] = "1"
        try:
            import transformers  # noqa: F401
        finally:
            if previous is None:
                os.environ.pop(_ADVICE_ENV, None)
            else:
                os.environ[_ADVICE_ENV] = previous
    return sys.modules["transformers"]


@lru_cache(maxsize=16)
def load_tokenizer(name: str, revision: str | None = None) -> Any:
    path = _load_path(name)
    transformers = transformers_module()
    if revision is None and _is_plain_fast_folder(path):
        return transformers.PreTrainedTokenizerFast.from_pretrained(path)

    extra = {"revision": revision} if revision else {}
    try:
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False,
                                                          **extra)
    except (ValueError, KeyError, OSError) as first:
        # Families newer than the installed transformers still load through
        # their fast tokenizer file.
        try:
            return transformers.PreTrainedTokenizerFast.from_pretrained(path, **extra)
        except Exception:
            if "/" not in name:
                raise OSError(
                    f"no tokenizer for {name!r}: it is neither a directory nor a Hugging Face "
                    "id this machine can load. A local model name (e.g. 'tiny') is resolved "
                    "by the caller: pass the directory, e.g. loops_runner.models.registry."
                    f"resolve_model({name!r}).load_path") from first
            raise first from None


def get_tokenizer(base_model: str, base_checkpoint: str | None = None) -> Any:
    return load_tokenizer(*tokenizer_source(base_model, base_checkpoint))
