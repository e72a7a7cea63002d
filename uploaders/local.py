"""Local disk: atomic writes (temporary name, fsync, rename), mode 0640."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from uploaders.base import Artifact, Location, UploadError

FILE_MODE = 0o640
DIR_MODE = 0o750


def write_atomic(
    path: Path,
    data: bytes | bytearray | memoryview,
    mode: int = FILE_MODE,
    *,
    overwrite: bool = True,
) -> None:
    """Readers see either nothing or the whole file, even across a crash.

    With overwrite=False an existing file is never replaced (FileExistsError),
    even by a concurrent writer of the same name: the file is published with
    link(), which fails if the name exists, instead of rename().
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is reduced by the umask
        if overwrite:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LocalUploader:
    name = "local"
    remote = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).absolute()

    def upload(self, artifact: Artifact) -> Location:
        path = self.directory / artifact.filename
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            try:
                write_atomic(path, artifact.data, overwrite=False)
            except FileExistsError:
                raise UploadError(
                    f"{path} exists: refusing to overwrite", retryable=False
                ) from None
        except OSError as exc:
            raise UploadError(f"cannot write {path}: {exc.strerror}") from exc
        return Location("local", str(path))

    def write_sidecar(self, location: Location, result_json: str) -> None:
        """`<file>.json` beside the capture, holding its result event."""
        write_atomic(Path(location.url + ".json"), (result_json + "\n").encode())
