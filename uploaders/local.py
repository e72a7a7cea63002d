"""Local disk: atomic writes (unnamed or temporary file, fsync, link or
rename, directory fsync), mode 0640, and beside each capture `<file>.json`,
its final result event. The directory is held open (`OpenDirectory`)."""

from __future__ import annotations

import os
from pathlib import Path

from pcapd.core.atomic import OpenDirectory
from pcapd.core.events import ResultEvent
from uploaders.base import Artifact, Location, Sink, UploadError

DIR_MODE = 0o750


class LocalUploader(Sink):
    name = "local"
    remote = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).absolute()
        self._dir = OpenDirectory(self.directory)

    def upload(self, artifact: Artifact) -> Location:
        path = self.directory / artifact.filename
        try:
            try:
                self._dir.write(artifact.filename, artifact.data, overwrite=False)
            except FileNotFoundError:
                # Made when a write finds it missing (first, or removed
                # meanwhile: the open descriptor's check sees that).
                self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                self._dir.write(artifact.filename, artifact.data, overwrite=False)
        except FileExistsError:
            raise UploadError(f"{path} exists: refusing to overwrite", retryable=False) from None
        except OSError as exc:
            raise UploadError(f"cannot write {path}: {exc.strerror}") from exc
        return Location("local", str(path))

    def writes_to(self) -> str:
        return str(self.directory)

    def stored(self, location: Location, result: ResultEvent) -> None:
        """`<file>.json` beside the capture, holding its result event: in the
        directory `upload` has just checked (not looked at again)."""
        name = Path(location.url).name + ".json"
        self._dir.write(name, (result.to_json() + "\n").encode(), check=False)
