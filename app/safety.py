"""Check each member as extraction with the `data` filter would, without extracting anything."""

import logging
import os
import posixpath
import tarfile
import tempfile

from app.errors import ErrorCode, RepackError
from app.tarstream import printable

log = logging.getLogger(__name__)


class MemberChecker:
    """Rejects members that extraction with `tarfile.data_filter` would reject, and more.

    The filter resolves each path against a destination folder, following the
    links already extracted there. Here the destination is a private temporary
    folder that contains only the folders and symlinks of the members checked so
    far (no file data). So chains of links that escape only together are caught
    as on extraction, and nothing else on this machine affects the verdict.

    Beyond the filter, it rejects what GNU tar or SageMaker would fail to
    extract: '..' components, empty names, hardlinks to missing members, to
    folders or to the hyperparameters.json being replaced, and a folder named
    like that file.
    """

    def __init__(self, archive_name: str, replaced: str) -> None:
        self.archive_name = archive_name
        self.replaced = replaced
        self._destination = tempfile.TemporaryDirectory(prefix="repack-check-")
        self._folders: set[str] = set()
        self._names: set[str] = set()

    def close(self) -> None:
        self._destination.cleanup()

    def __enter__(self) -> "MemberChecker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check(self, info: tarfile.TarInfo) -> None:
        """Raise UNSAFE_ARCHIVE (or INVALID_ARCHIVE) when `info` could not be extracted safely."""
        self._check_name(info)
        try:
            tarfile.data_filter(info, self._destination.name)
        except tarfile.FilterError as exc:
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE, self._explain(info, exc)) from None
        if info.islnk():
            self._check_hardlink(info)

        name = normalize(info.name)
        self._names.add(name)
        if info.isdir():
            self._folders.add(name)
        self._add_to_skeleton(info, name)

    def _check_name(self, info: tarfile.TarInfo) -> None:
        member = self._member(info)
        if "\x00" in info.name or "\x00" in info.linkname:
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{member} has a NUL byte in its name or link target, which no "
                              "file system allows; the archive is damaged, create it again")
        if info.name.startswith("/"):
            # The data filter strips a leading '/' and extracts inside the destination,
            # but other extractors write to the absolute path itself.
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE, self._explain(
                info, tarfile.AbsolutePathError(info)))
        if ".." in info.name.split("/"):
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE,
                              f"{member} has a '..' component, which GNU tar refuses to "
                              "extract; create the archive from inside the model folder")
        name = normalize(info.name)
        if not name and not info.isdir():
            raise RepackError(ErrorCode.UNSAFE_ARCHIVE,
                              f"{member} is a file with an empty name (or '.'), which cannot "
                              "be extracted; create the archive again")
        if name == self.replaced and info.isdir():
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{member} is a folder named like the {self.replaced} file this "
                              "job adds at the root; rename or remove that folder")

    def _check_hardlink(self, info: tarfile.TarInfo) -> None:
        target = normalize(info.linkname)
        problem = None
        if target == self.replaced:
            problem = (f"the {self.replaced} that this job replaces; make it a copy or a "
                       "symlink instead")
        elif target in self._folders:
            problem = "a folder, which cannot be hardlinked; make it a symlink instead"
        elif target not in self._names:
            problem = ("not an earlier member; create the archive again with the link's "
                       "target included")
        if problem is not None:
            code = ErrorCode.INVALID_ARCHIVE if target == self.replaced else \
                ErrorCode.UNSAFE_ARCHIVE
            raise RepackError(code, f"{self._member(info)} is a hardlink to "
                                    f"{printable(info.linkname)}, {problem}")

    def _add_to_skeleton(self, info: tarfile.TarInfo, name: str) -> None:
        """Create the member's folder or symlink in the stand-in destination, as extraction would."""
        path = os.path.join(self._destination.name, name)
        try:
            if info.isdir():
                os.makedirs(path, exist_ok=True)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if info.issym():
                if os.path.lexists(path) and not os.path.isdir(path):
                    os.unlink(path)
                os.symlink(info.linkname, path)
        except (OSError, ValueError):
            # NOTE: a skeleton entry that cannot be made (a name clash, say) is skipped.
            # The filter then judges later members as if that entry did not exist.
            pass

    def _member(self, info: tarfile.TarInfo) -> str:
        return f"{self.archive_name}: member {printable(info.name)}"

    def _explain(self, info: tarfile.TarInfo, exc: tarfile.FilterError) -> str:
        member = self._member(info)
        if isinstance(exc, tarfile.AbsolutePathError):
            return f"{member} has an absolute path; create the archive with relative paths"
        if isinstance(exc, tarfile.OutsideDestinationError):
            return (f"{member} would be extracted outside the model folder, through a link; "
                    "create the archive from inside the model folder with links dereferenced")
        if isinstance(exc, (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)):
            return (f"{member} is a link to {printable(info.linkname)}, outside the archive; "
                    "create the archive with links dereferenced (`tar czhf`, or copy the files "
                    "out of a Hugging Face cache folder with `cp -L`)")
        if isinstance(exc, tarfile.SpecialFileError):
            return (f"{member} is a device file, FIFO or other special file; only regular "
                    "files, folders and links belong in a model archive")
        return f"{member} cannot be extracted safely ({exc}); create the archive again"


def normalize(name: str) -> str:
    """Return a member name as a plain relative path ('./a//b/' is 'a/b'), for comparison."""
    path = posixpath.normpath(name.lstrip("/")) if name else "."
    return "" if path == "." else path


class LayoutReport:
    """Collects members that extract fine but probably not as the user meant; logs warnings."""

    NESTED_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")

    def __init__(self, archive_name: str) -> None:
        self.archive_name = archive_name
        self._top_levels: set[str] = set()
        self._files: list[str] = []
        self._macos: list[str] = []
        self._owner_only: list[str] = []
        self._set_id: list[str] = []
        self._backslashes: list[str] = []

    def add(self, info: tarfile.TarInfo) -> None:
        name = normalize(info.name)
        if not name:
            return
        parts = name.split("/")
        self._top_levels.add(parts[0] if len(parts) > 1 or info.isdir() else "")
        if info.isreg():
            self._files.append(name)
            if not info.mode & 0o044:
                self._owner_only.append(name)
        if parts[-1].startswith("._") or parts[0] == "__MACOSX":
            self._macos.append(name)
        if info.mode & 0o6000 and not info.isdir():
            self._set_id.append(name)
        if "\\" in name:
            self._backslashes.append(name)

    def log_warnings(self) -> None:
        if len(self._top_levels) == 1 and "" not in self._top_levels and self._files:
            (folder,) = self._top_levels
            log.warning("Every member of %s is under the folder %s/, but SageMaker expects the "
                        "model files at the archive root; create it with "
                        "`tar czf model.tar.gz -C %s .`", self.archive_name, printable(folder),
                        printable(folder))
        files = [name for name in self._files if name != "hyperparameters.json"]
        if len(files) == 1 and files[0].lower().endswith(self.NESTED_ARCHIVE_SUFFIXES):
            log.warning("%s contains a single file, %s, which is itself an archive; SageMaker "
                        "extracts only the outer one, so archive the model's files directly",
                        self.archive_name, printable(files[0]))
        self._warn_names(self._macos, "macOS metadata (._* files or __MACOSX/)",
                         "create the archive with COPYFILE_DISABLE=1, or delete them")
        self._warn_names(self._owner_only, "readable only by their owner",
                         "a serving container running as another user cannot read them; "
                         "run `chmod -R a+rX` before archiving")
        self._warn_names(self._set_id, "setuid or setgid",
                         "model files need no such bits; clear them with `chmod ug-s`")
        self._warn_names(self._backslashes, "named with backslashes",
                         "on Linux a backslash is part of the name, not a folder separator; "
                         "create the archive on Linux or macOS, or with forward slashes")

    def _warn_names(self, names: list[str], problem: str, advice: str) -> None:
        if names:
            log.warning("%d member(s) of %s are %s, first %s: %s", len(names),
                        self.archive_name, problem, printable(names[0]), advice)
