"""Signed, expiring URLs for checkpoint files (the local stand-in for presigned S3 URLs).

A token names one file as ``<run>/<kind>/<name>/<relative file>`` plus an
expiry, and carries an HMAC-SHA256 over both made with a secret only the
control plane knows (``<home>/control_plane.secret``, kept across restarts so
URLs stay valid for their whole lifetime). The SDK fetches these URLs with no
headers at all, so the token is the only credential: a changed byte in the
path, the expiry or the signature makes it worthless.

Even a valid token is resolved defensively: every name is checked again and the
final path must lie inside that checkpoint's folder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from loops_runner.storage.layout import checkpoint_dir
from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import CHECKPOINT_KINDS

SECRET_FILE = "control_plane.secret"
DEFAULT_URL_TTL_SECONDS = 3600


class FileTokenError(Exception):
    """The token is malformed, tampered with, expired or names no allowed file."""


def load_or_create_secret(home: Path) -> bytes:
    """The signing key, created once (0600) and reused after restarts."""
    path = home / SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class FileRef:
    run_id: str
    kind: str
    name: str
    relative: str

    def key(self) -> str:
        return f"{self.run_id}/{self.kind}/{self.name}/{self.relative}"


def check_relative_name(relative: str) -> str:
    """A file name inside a checkpoint: subfolders allowed, no ``..``, no absolute path."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative
            or any(part in {"", ".", ".."} for part in parts)):
        raise FileTokenError(f"file name {relative!r} leaves its checkpoint folder")
    return relative


def parse_key(key: str) -> FileRef:
    parts = key.split("/", 3)
    if len(parts) != 4:
        raise FileTokenError("token names no checkpoint file")
    run_id, kind, name, relative = parts
    try:
        check_storage_name(run_id)
        check_storage_name(name)
    except ValueError as exc:
        raise FileTokenError(str(exc)) from None
    if kind not in CHECKPOINT_KINDS:
        raise FileTokenError(f"unknown checkpoint kind {kind!r}")
    return FileRef(run_id, kind, name, check_relative_name(relative))


class FileSigner:
    def __init__(self, secret: bytes, ttl_seconds: int = DEFAULT_URL_TTL_SECONDS) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, b"loops-file-url\0" + payload, hashlib.sha256).digest()

    def sign(self, ref: FileRef, *, expires_at: int | None = None) -> tuple[str, int]:
        """A URL token for ``ref`` and its expiry (unix seconds)."""
        expiry = int(expires_at if expires_at is not None else time.time() + self.ttl_seconds)
        payload = json.dumps({"p": ref.key(), "e": expiry}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", expiry

    def verify(self, token: str, *, now: float | None = None) -> FileRef:
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:
            raise FileTokenError("malformed file token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise FileTokenError("file token signature does not match")
        try:
            claims = json.loads(payload)
            key, expiry = str(claims["p"]), int(claims["e"])
        except (ValueError, KeyError, TypeError):
            raise FileTokenError("malformed file token") from None
        if (now if now is not None else time.time()) >= expiry:
            raise FileTokenError("file URL expired; list the checkpoint's files again")
        return parse_key(key)


def resolve_file(home: Path, ref: FileRef) -> Path:
    """The file on disk, guaranteed to be inside its checkpoint folder.

    Raises ``FileTokenError`` for an escape (symlinks included) and
    ``FileNotFoundError`` when the file is gone (e.g. the checkpoint expired).
    """
    folder = checkpoint_dir(home, ref.run_id, ref.kind, ref.name)  # type: ignore[arg-type]
    root = folder.resolve()
    target = (folder / ref.relative).resolve()
    if not target.is_relative_to(root):
        raise FileTokenError("file lies outside its checkpoint folder")
    if not target.is_file():
        raise FileNotFoundError(ref.key())
    return target
