"""Check one repack output against the model it came from.

Checks, each reported by name when it fails:
  - the output folder contains model.tar.gz and nothing else (no temporary file left),
  - `gzip -t` exits 0,
  - `tar tzf` exits 0 and lists exactly the expected members,
  - Python's tarfile reads every member, and each member's sha256 equals the input's,
    with hyperparameters.json equal to the given file and no duplicate names,
  - the engine's last `INFO Wrote ...: N members, sha256 HEX` line gives the real
    member count and the sha256 of the output file.
"""

import hashlib
import re
import subprocess
import tarfile
import zlib

CHUNK = 1 << 20
WROTE_LINE = re.compile(r"^INFO Wrote .*: (\d+) members, sha256 ([0-9a-f]{64})\s*$")


class InflatingReader:
    """A read-only file object over the inflated content of a gzip file.

    Follows concatenated gzip members and hashes the compressed bytes on the way,
    so one pass gives both the tar stream and the output's sha256.
    """

    def __init__(self, stream):
        self.stream = stream
        self.compressed_sha256 = hashlib.sha256()
        self.decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self.pending = b""
        self.buffer = bytearray()
        self.finished = False

    def _fill(self):
        if not self.pending:
            self.pending = self.stream.read(CHUNK)
            self.compressed_sha256.update(self.pending)
            if not self.pending:
                if not self.decompressor.eof:
                    raise EOFError("the gzip stream ends before its last member is complete")
                self.finished = True
                return
        self.buffer += self.decompressor.decompress(self.pending, CHUNK)
        self.pending = self.decompressor.unconsumed_tail
        if self.decompressor.eof:
            self.pending = self.decompressor.unused_data
            if self.pending:
                self.decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)

    def read(self, size=-1):
        while not self.finished and (size < 0 or len(self.buffer) < size):
            self._fill()
        if size < 0:
            size = len(self.buffer)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def drain(self):
        while not self.finished:
            self._fill()
            self.buffer.clear()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_members(path):
    """Return ([(name, sha256 or None for non-files)], sha256 of the file)."""
    members = []
    with open(path, "rb") as stream:
        reader = InflatingReader(stream)
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    members.append((member.name, None))
                    continue
                digest = hashlib.sha256()
                content = archive.extractfile(member)
                while chunk := content.read(CHUNK):
                    digest.update(chunk)
                members.append((member.name, digest.hexdigest()))
        reader.drain()
    return members, reader.compressed_sha256.hexdigest()


def check_members(members, expected):
    problems = []
    names = [name for name, _ in members]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"duplicate members {duplicates}")
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    if missing:
        problems.append(f"missing members {missing}")
    if extra:
        problems.append(f"unexpected members {extra}")
    changed = sorted(name for name, digest in members
                     if name in expected and digest != expected[name])
    if changed:
        problems.append(f"member bytes differ from the input in {changed}")
    return problems


def check_wrote_line(log_path, member_count, output_sha256):
    with open(log_path, encoding="utf-8", errors="replace") as log:
        matches = [WROTE_LINE.match(line) for line in log]
    matches = [match for match in matches if match]
    if not matches:
        return ["no 'INFO Wrote ...: N members, sha256 HEX' line in the log"]
    count, digest = matches[-1].groups()
    problems = []
    if int(count) != member_count:
        problems.append(f"log says {count} members, the output has {member_count}")
    if digest != output_sha256:
        problems.append("log sha256 differs from the output's sha256")
    return problems


def verify_output(output_dir, manifest, hyperparameters, log_path):
    """Return the problems found in output_dir/model.tar.gz. An empty list means PASS."""
    output = output_dir / "model.tar.gz"
    leftovers = sorted(p.name for p in output_dir.iterdir() if p.name != "model.tar.gz")
    if not output.exists():
        return ["no model.tar.gz in the output folder"]
    problems = [f"files left in the output folder: {leftovers}"] if leftovers else []

    expected = dict(manifest["sha256"])
    expected["hyperparameters.json"] = file_sha256(hyperparameters)

    # gzip -t and tar tzf inflate on their own, so they run beside Python's pass.
    gzip_test = subprocess.Popen(["gzip", "-t", str(output)], stderr=subprocess.DEVNULL)
    tar_list = subprocess.Popen(["tar", "tzf", str(output)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        members, output_sha256 = read_members(output)
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        members, output_sha256 = None, None
        problems.append(f"tarfile cannot read the output: {exc}")
    listing = tar_list.communicate()[0].decode(errors="replace").splitlines()

    if gzip_test.wait() != 0:
        problems.append("gzip -t failed")
    if tar_list.returncode != 0:
        problems.append("tar tzf failed")
    elif sorted(listing) != sorted(expected):
        problems.append("tar tzf lists other members than expected")
    if members is not None:
        problems += check_members(members, expected)
        problems += check_wrote_line(log_path, len(members), output_sha256)
    return problems
