"""Local disk: atomic writes (temporary name, fsync, rename), mode 0640, and
beside each capture `<file>.json`, its final result event."""

from __future__ import annotations

import os
from pathlib import Path

from pcapd.core.atomic import write_atomic
from pcapd.core.events import ResultEvent
from uploaders.base import Artifact, Location, Sink, UploadError

DIR_MODE = 0o750


class LocalUploader(Sink):
    name = "local"
    remote = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).absolute()

    def upload(self, artifact: Artifact) -> Location:
        path = self.directory / artifact.filename
        try:
            try:
                write_atomic(path, artifact.data, overwrite=False)
            except FileNotFoundError:
                # Made when first missing (or removed meanwhile), not looked
                # at before every file: two system calls a capture in a storm.
                self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                write_atomic(path, artifact.data, overwrite=False)
        except FileExistsError:
            raise UploadError(f"{path} exists: refusing to overwrite", retryable=False) from None
        except OSError as exc:
            raise UploadError(f"cannot write {path}: {exc.strerror}") from exc
        return Location("local", str(path))

    def writes_to(self) -> str:
        return str(self.directory)

    def stored(self, location: Location, result: ResultEvent) -> None:
        """`<file>.json` beside the capture, holding its result event."""
        write_atomic(Path(location.url + ".json"), (result.to_json() + "\n").encode())
