"""Check each member as extraction with the `data` filter would, without extracting anything."""

import logging
import tarfile
import tempfile

from app.errors import ErrorCode, RepackError
from app.tarstream import printable

log = logging.getLogger(__name__)


class MemberChecker:
    """Rejects members that `tarfile.data_filter` rejects, and hardlinks to missing members.

    The filter resolves paths against a destination folder; an empty temporary
    folder stands in for it, so no link on this machine can affect the verdict.
    """

    def __init__(self, archive_name: str) -> None:
        self.archive_name = archive_name
        self._destination = tempfile.TemporaryDirectory(prefix="repack-check-")
        self._names: set[str] = set()

    def close(self) -> None:
        self._destination.cleanup()

    def __enter__(self) -> "MemberChecker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check(self, info: tarfile.TarInfo) -> None:
        """Raise UNSAFE_ARCHIVE when `info` could not be extracted safely."""
        if info.name.startswith("/"):
            # The data filter strips a leading '/' and extracts inside the destination,
            # but other extractors write to the absolute path itself.
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE, self._explain(
                info, tarfile.AbsolutePathError(info)))
        try:
            tarfile.data_filter(info, self._destination.name)
        except tarfile.FilterError as exc:
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE, self._explain(info, exc)) from None
        if info.islnk() and normalize(info.linkname) not in self._names:
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE,
                              f"{self.archive_name}: member {printable(info.name)} is a hardlink "
                              f"to {printable(info.linkname)}, which is not an earlier member; "
                              "create the archive again with the link's target included")
        self._names.add(normalize(info.name))

    def _explain(self, info: tarfile.TarInfo, exc: tarfile.FilterError) -> str:
        member = f"{self.archive_name}: member {printable(info.name)}"
        if isinstance(exc, tarfile.AbsolutePathError):
            return f"{member} has an absolute path; create the archive with relative paths"
        if isinstance(exc, tarfile.OutsideDestinationError):
            return (f"{member} would be extracted outside the model folder; create the "
                    "archive from inside the model folder, with no '..' in member names")
        if isinstance(exc, (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)):
            return (f"{member} is a link to {printable(info.linkname)}, outside the archive; "
                    "create the archive with links dereferenced (`tar czhf`, or copy the files "
                    "out of a Hugging Face cache folder with `cp -L`)")
        if isinstance(exc, tarfile.SpecialFileError):
            return (f"{member} is a device file, FIFO or other special file; only regular "
                    "files, folders and links belong in a model archive")
        return f"{member} cannot be extracted safely ({exc}); create the archive again"


def normalize(name: str) -> str:
    """Return a member name without leading './' or '/' and trailing '/', for comparison."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")
