"""A value that never prints: tokens, keys and passwords from the config."""

from __future__ import annotations

import os
from pathlib import Path


class Secret:
    """Wraps a secret string; `repr`/`str` hide it, `reveal()` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def resolve_secret(spec: str) -> Secret:
    """`env:NAME` (an environment variable), `file:/path` (the file's text) or
    the secret itself; ValueError says what is missing, never the secret."""
    if spec.startswith("env:"):
        name = spec[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return Secret(os.environ[name])
    if spec.startswith("file:"):
        path = spec[5:]
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return Secret(spec)
