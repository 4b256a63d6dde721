"""The local control plane: sessions, runs, samplers, checkpoints and process supervision.

``server`` (CLI entry and app), ``routes`` (HTTP), ``service`` (what each call
does), ``store`` (SQLite), ``supervisor`` (child processes), ``registry``
(checkpoint manifests), ``files`` (signed file URLs), ``auth`` (API key),
``tombstone`` (ports of servers that are gone).
"""
