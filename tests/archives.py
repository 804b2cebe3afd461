"""Build model archives for tests, and read them back member by member.

Tests describe an archive as a list of members. These helpers turn it into the
bytes that `tar`, tarfile or pigz would write, so each test reads like a spec.
"""

import bz2
import dataclasses
import gzip
import io
import lzma
import tarfile
import zlib

HYPERPARAMETERS = "hyperparameters.json"


@dataclasses.dataclass
class Member:
    """A member to put in a test archive."""

    info: tarfile.TarInfo
    data: bytes | None = None


def file(name: str, data: bytes, *, mode: int = 0o644, mtime: int = 1_700_000_000,
         uid: int = 1000, gid: int = 1000, uname: str = "ml", gname: str = "ml") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode, info.mtime, info.uid, info.gid = mode, mtime, uid, gid
    info.uname, info.gname = uname, gname
    return Member(info, data)


def folder(name: str, *, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode, info.mtime = mode, 1_700_000_000
    return Member(info)


def symlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_700_000_000
    return Member(info)


def hardlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.LNKTYPE, target, 1_700_000_000
    return Member(info)


def device(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return Member(info)


def model_members() -> list[Member]:
    """A small model folder: config, tokenizer, a weight shard, a subfolder, links."""
    weights = bytes((i * 7919) % 251 for i in range(300_000))
    return [
        folder("./"),
        file("./config.json", b'{"hidden_size": 64}\n'),
        file("./tokenizer.json", b'{"vocab": ["a", "b"]}\n' * 200),
        folder("./shards"),
        file("./shards/model-00001.safetensors", weights),
        symlink("./model.safetensors", "shards/model-00001.safetensors"),
        hardlink("./shards/copy.safetensors", "./shards/model-00001.safetensors"),
    ]


def tar_bytes(members: list[Member], format: int = tarfile.GNU_FORMAT) -> bytes:
    """Return an uncompressed tar archive of `members`, as tarfile writes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as archive:
        for member in members:
            data = io.BytesIO(member.data) if member.data is not None else None
            archive.addfile(member.info, data)
    return buffer.getvalue()


def gzip_bytes(data: bytes, *, level: int = 6, members: int = 1) -> bytes:
    """Gzip `data` as `members` concatenated gzip members (multi-member when > 1)."""
    size = -(-len(data) // members) if data else 0
    pieces = [data[i * size:(i + 1) * size] for i in range(members)]
    return b"".join(gzip.compress(piece, compresslevel=level, mtime=0) for piece in pieces)


def compress(data: bytes, kind: str) -> bytes:
    """Compress a tar stream as `kind`: gzip, gzip-multi, bz2, xz or plain."""
    if kind == "gzip":
        return gzip_bytes(data)
    if kind == "gzip-multi":
        return gzip_bytes(data, members=3)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "plain":
        return data
    raise ValueError(kind)


def decompress(data: bytes) -> bytes:
    """Return the tar stream inside a gzip (one or more members) archive."""
    return gzip.decompress(data)


def raw_members(tar: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Return each member with its raw bytes: header blocks plus data blocks, as stored."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        infos = archive.getmembers()
        # After the last member, tarfile's offset is where the next header would be:
        # the end of that member's stored data, which for a sparse file is not its size.
        end_of_members = archive.offset
    ends = [info.offset for info in infos[1:]] + [end_of_members]
    return [(info, tar[info.offset:end]) for info, end in zip(infos, ends)]


def is_root_hyperparameters(info: tarfile.TarInfo) -> bool:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    return name == HYPERPARAMETERS


def crc_mismatch(gz: bytes) -> bytes:
    """Return a gzip stream whose trailer CRC-32 no longer matches its data."""
    crc = (zlib.crc32(b"wrong") ^ int.from_bytes(gz[-8:-4], "little")) & 0xFFFFFFFF
    return gz[:-8] + crc.to_bytes(4, "little") + gz[-4:]
