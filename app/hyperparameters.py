"""Check hyperparameters.json: UTF-8, strict JSON (RFC 8259), one JSON object, bounded size."""

import codecs
import json
import logging
from pathlib import Path

from app.errors import ErrorCode, RepackError

log = logging.getLogger(__name__)

# SageMaker passes hyperparameters on the command line and in the environment, where
# a few KiB is already a lot; 1 MiB leaves ample room and rejects a file picked by mistake.
MAX_SIZE = 1 << 20


def load(path: Path) -> bytes:
    """Read and check `path`; return the bytes to archive as hyperparameters.json.

    The bytes are the file's own, except that a UTF-8 byte order mark is removed
    (with a warning) because `json.loads` rejects text that starts with one.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SIZE + 1)
    except OSError as exc:
        raise RepackError(ErrorCode.HYPERPARAMETERS_NOT_FOUND,
                          f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_SIZE:
        raise _invalid(path, f"is larger than the {MAX_SIZE // 1024} KiB limit; "
                             "hyperparameters should be a small JSON object")

    data = _strip_utf8_bom(path, data)
    text = _decode(path, data)
    value = _parse(path, text)
    if not isinstance(value, dict):
        raise _invalid(path, f"contains a JSON {_json_type(value)} at the top level; "
                             'it must be a JSON object such as {"epochs": "10"}')
    log.info("Hyperparameters: %d keys, %d bytes", len(value), len(data))
    return data


def _strip_utf8_bom(path: Path, data: bytes) -> bytes:
    if data.startswith(codecs.BOM_UTF8):
        log.warning("%s starts with a UTF-8 byte order mark; archiving it without the mark", path)
        return data[len(codecs.BOM_UTF8):]
    return data


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data[:4]:
        raise _invalid(path, "is UTF-16 or UTF-32 encoded; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(data, exc.start)
        raise _invalid(path, f"is not valid UTF-8 at byte {exc.start} (line {line}, "
                             f"column {column}); save it as UTF-8") from None


def _parse(path: Path, text: str) -> object:
    try:
        return json.loads(text, parse_constant=_reject_constant,
                          object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise _invalid(path, f"is not valid JSON: {exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno}") from None
    except _Rejected as exc:
        raise _invalid(path, str(exc)) from None
    except RecursionError:
        raise _invalid(path, "nests arrays or objects too deeply to parse") from None
    except ValueError as exc:
        # Python refuses integers of more than 4300 digits (sys.int_info).
        raise _invalid(path, f"has a value Python cannot read ({exc}); "
                             "write very long numbers as strings") from None


class _Rejected(ValueError):
    """Valid for Python's json module, but not strict JSON or ambiguous."""


def _reject_constant(name: str) -> object:
    raise _Rejected(f"contains {name}, which JSON (RFC 8259) does not allow; "
                    "write the value as a string or a number")


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _Rejected(f"has the key {key!r} more than once in one object; "
                            "keep one so the value is unambiguous")
        result[key] = value
    return result


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return names.get(type(value), "null")


def _invalid(path: Path, problem: str) -> RepackError:
    return RepackError(ErrorCode.INVALID_HYPERPARAMETERS, f"{path} {problem}")
