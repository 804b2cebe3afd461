"""Generate synthetic Hugging Face style models and archive each one four ways.

A model folder contains fp16-like safetensors shards, a tokenizer.json, a
config.json and the other small files that `save_pretrained` writes. Every byte
comes from `random.Random(seed)`, so the same seed and size give the same files.

Archives of one model, all with the same member names in the same order:
  gnu-tar     `tar czf` (GNU tar piping to gzip -6)
  tarfile     Python `tarfile.open(..., "w:gz")`, compression level 9
  pigz        `tar -I pigz -cf` (one gzip member, flush points every 128 KiB)
  multi-gzip  the uncompressed tar cut into 16 MiB pieces, each a gzip member

Run as a script to build the models and archives without measuring anything:
  python3 bench/make_models.py --sizes 100M --work-dir /tmp/repack-bench
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

ARCHIVE_KINDS = ("gnu-tar", "tarfile", "pigz", "multi-gzip")
MULTI_GZIP_PIECE = 16 * MiB
GENERATOR_BLOCK = 4 * MiB

# Shapes of a small Llama-like decoder. The layer count is chosen to reach the size.
HIDDEN = 768
INTERMEDIATE = 2048
VOCAB = 32000

HYPERPARAMETERS = {
    "epochs": "3",
    "learning_rate": "5e-05",
    "per_device_train_batch_size": "8",
    "warmup_ratio": "0.03",
    "model_name_or_path": "bench/synthetic-llama",
}


def parse_size(text):
    """Return the byte count of a size such as 100M or 1G (binary units)."""
    units = {"K": 1 << 10, "M": MiB, "G": GiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def log(message):
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


class Fp16Generator:
    """Produce little-endian float16 bytes whose values follow a normal distribution.

    Generating values one at a time in Python would take minutes per GiB, so each
    value is made from two random bytes. The low byte (low mantissa bits) stays
    uniform. The high byte (sign, exponent, top mantissa bits) is mapped through a
    256-entry table of normal quantiles with `bytes.translate`. So the values follow
    the normal distribution at a resolution of 1/256 in probability.
    """

    def __init__(self, rng):
        self.rng = rng
        self.tables = {}

    def high_byte_table(self, mean, sigma):
        key = (mean, sigma)
        if key not in self.tables:
            normal = statistics.NormalDist(mean, sigma)
            quantiles = (normal.inv_cdf((i + 0.5) / 256) for i in range(256))
            self.tables[key] = bytes(struct.pack("<e", q)[1] for q in quantiles)
        return self.tables[key]

    def write(self, stream, count, mean=0.0, sigma=0.02):
        """Write `count` float16 values to `stream`."""
        table = self.high_byte_table(mean, sigma)
        remaining = count
        while remaining:
            values = min(remaining, GENERATOR_BLOCK // 2)
            block = bytearray(2 * values)
            block[0::2] = self.rng.randbytes(values)
            block[1::2] = self.rng.randbytes(values).translate(table)
            stream.write(block)
            remaining -= values


def tensor_layout(target_bytes):
    """Return [(name, shape)] for a decoder whose fp16 weights total about target_bytes."""
    embedding = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    layer_params = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
    layers = max(1, round((target_bytes / 2 - VOCAB * HIDDEN) / layer_params))
    tensors = list(embedding)
    for n in range(layers):
        prefix = f"model.layers.{n}."
        tensors += [
            (prefix + "input_layernorm.weight", (HIDDEN,)),
            (prefix + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (prefix + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (prefix + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (prefix + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (prefix + "post_attention_layernorm.weight", (HIDDEN,)),
            (prefix + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (prefix + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (prefix + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    tensors.append(("model.norm.weight", (HIDDEN,)))
    return tensors, layers


def element_count(shape):
    count = 1
    for dim in shape:
        count *= dim
    return count


def split_into_shards(tensors, max_shard_bytes):
    shards, current, current_bytes = [], [], 0
    for name, shape in tensors:
        size = 2 * element_count(shape)
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, shape))
        current_bytes += size
    shards.append(current)
    return shards


def write_safetensors(path, tensors, generator):
    """Write one safetensors file: u64 header length, JSON header, tensor data."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = 2 * element_count(shape)
        header[name] = {"dtype": "F16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)

    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(header_bytes)))
        stream.write(header_bytes)
        for name, shape in tensors:
            if name.endswith("norm.weight"):
                generator.write(stream, element_count(shape), mean=1.0, sigma=0.05)
            else:
                generator.write(stream, element_count(shape))
    return offset


def make_tokenizer(rng):
    """Return a byte-level BPE tokenizer.json (under 1 MiB) with made-up tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials)}
    merges = []
    while len(vocab) < VOCAB:
        left = "".join(rng.choice(letters) for _ in range(rng.randint(1, 4)))
        right = "".join(rng.choice(letters) for _ in range(rng.randint(1, 4)))
        token = ("\u0120" if rng.random() < 0.4 else "") + left + right
        if token not in vocab:
            vocab[token] = len(vocab)
            merges.append(f"{left} {right}")
    added = [
        {"id": i, "content": token, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, token in enumerate(specials)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": False,
                  "byte_fallback": False, "vocab": vocab, "merges": merges},
    }


def write_json(path, value, indent=2):
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(value, stream, indent=indent, ensure_ascii=False)
        stream.write("\n")


def generate_model(model_dir, target_bytes, seed):
    """Write a model folder of about target_bytes and return its file names in archive order."""
    rng = random.Random(seed)
    generator = Fp16Generator(rng)
    tensors, layers = tensor_layout(target_bytes)
    shards = split_into_shards(tensors, max(64 * MiB, target_bytes // 4))
    model_dir.mkdir(parents=True)

    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        shard_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(model_dir / shard_name, shard, generator)
        weight_map.update({name: shard_name for name, _ in shard})
        log(f"  wrote {shard_name}")
    write_json(model_dir / "model.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": weight_map})

    write_json(model_dir / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers, "num_attention_heads": 12, "num_key_value_heads": 12,
        "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": True, "torch_dtype": "float16",
        "bos_token_id": 1, "eos_token_id": 2,
    })
    write_json(model_dir / "generation_config.json",
               {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 256})
    write_json(model_dir / "tokenizer.json", make_tokenizer(rng), indent=None)
    write_json(model_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    })
    write_json(model_dir / "special_tokens_map.json",
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return sorted(os.listdir(model_dir))


def hash_files(model_dir, names):
    digests = {}
    for name in names:
        digest = hashlib.sha256()
        with open(model_dir / name, "rb") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
    return digests


def ensure_model(size_dir, target_bytes, seed):
    """Generate the model under size_dir unless a complete one with the same spec exists.

    Returns the manifest: spec, member names in archive order, and their sha256.
    """
    manifest_path = size_dir / "manifest.json"
    model_dir = size_dir / "model"
    spec = {"target_bytes": target_bytes, "seed": seed, "generator": 1}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["spec"] == spec and model_dir.is_dir():
            return manifest
    log(f"Generating a model of {target_bytes / MiB:.0f} MiB in {model_dir}")
    shutil.rmtree(size_dir, ignore_errors=True)
    started = time.perf_counter()
    names = generate_model(model_dir, target_bytes, seed)
    manifest = {"spec": spec, "members": names, "sha256": hash_files(model_dir, names)}
    manifest["model_bytes"] = sum((model_dir / name).stat().st_size for name in names)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"Generated {manifest['model_bytes'] / MiB:.1f} MiB in "
        f"{time.perf_counter() - started:.1f} s")
    return manifest


def ensure_pigz(install):
    """Return True when pigz is on PATH, installing it with apt-get if allowed."""
    if shutil.which("pigz"):
        return True
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        log("pigz is not installed; skipping the pigz archive "
            "(install it with `apt-get install -y pigz`)")
        return False
    log("Installing pigz with apt-get")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["apt-get", "update"], check=False, **quiet)
    result = subprocess.run(["apt-get", "install", "-y", "pigz"], check=False, **quiet)
    if result.returncode != 0 or not shutil.which("pigz"):
        log("apt-get could not install pigz; skipping the pigz archive")
        return False
    return True


def archive_command(kind, output, model_dir, names):
    if kind == "gnu-tar":
        return ["tar", "czf", str(output), "-C", str(model_dir), *names]
    if kind == "pigz":
        return ["tar", "-I", "pigz", "-cf", str(output), "-C", str(model_dir), *names]
    # tarfile and multi-gzip run in a separate interpreter so two builds use two cores.
    return [sys.executable, __file__, f"--build-{kind}", str(output), str(model_dir), *names]


def build_tarfile_archive(output, model_dir, names):
    with tarfile.open(output, "w:gz", compresslevel=9) as archive:
        for name in names:
            archive.add(os.path.join(model_dir, name), arcname=name)


def build_multi_gzip_archive(output, model_dir, names):
    """Pipe `tar cf -` through zlib, starting a new gzip member every MULTI_GZIP_PIECE bytes."""
    tar = subprocess.Popen(["tar", "cf", "-", "-C", str(model_dir), *names],
                           stdout=subprocess.PIPE)
    members = 0
    with open(output, "wb") as stream:
        while True:
            piece = tar.stdout.read(MULTI_GZIP_PIECE)
            if not piece:
                break
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
            stream.write(compressor.compress(piece) + compressor.flush())
            members += 1
    if tar.wait() != 0:
        raise SystemExit(f"tar cf failed with exit code {tar.returncode}")
    return members


def ensure_archives(size_dir, manifest, kinds):
    """Build the missing archives of one model, two at a time, and return {kind: path}."""
    archive_dir = size_dir / "archives"
    archive_dir.mkdir(exist_ok=True)
    model_dir = size_dir / "model"
    paths = {kind: archive_dir / f"{kind}.tar.gz" for kind in kinds}

    def build(kind):
        temporary = paths[kind].with_suffix(".tmp")
        started = time.perf_counter()
        command = archive_command(kind, temporary, model_dir, manifest["members"])
        subprocess.run(command, check=True)
        os.replace(temporary, paths[kind])
        log(f"  built {paths[kind]} ({paths[kind].stat().st_size / MiB:.1f} MiB) "
            f"in {time.perf_counter() - started:.1f} s")

    missing = [kind for kind in kinds if not paths[kind].exists()]
    if missing:
        log(f"Building archives: {', '.join(missing)}")
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(build, missing))
    return paths


def ensure_hyperparameters(work_dir):
    path = work_dir / "hyperparameters.json"
    if not path.exists():
        write_json(path, HYPERPARAMETERS)
    return path


def prepare(work_dir, sizes, seed, kinds, install_pigz=True):
    """Build every missing model and archive, and return {size_label: (manifest, archives)}."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if "pigz" in kinds and not ensure_pigz(install_pigz):
        kinds = tuple(kind for kind in kinds if kind != "pigz")
    prepared = {}
    for label in sizes:
        size_dir = work_dir / label
        manifest = ensure_model(size_dir, parse_size(label), seed)
        prepared[label] = (manifest, ensure_archives(size_dir, manifest, kinds))
    return prepared


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--build-tarfile":
        build_tarfile_archive(argv[1], argv[2], argv[3:])
        return
    if argv and argv[0] == "--build-multi-gzip":
        build_multi_gzip_archive(argv[1], argv[2], argv[3:])
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100M,1G",
                        help="comma-separated model sizes in binary units (default: 100M,1G)")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(os.environ.get("BENCH_DIR", "/tmp/repack-bench")),
                        help="folder for models and archives "
                             "(default: $BENCH_DIR or /tmp/repack-bench)")
    parser.add_argument("--seed", type=int, default=20240601, help="generator seed")
    args = parser.parse_args(argv)
    prepare(args.work_dir, args.sizes.split(","), args.seed, ARCHIVE_KINDS)
    ensure_hyperparameters(args.work_dir)


if __name__ == "__main__":
    main()
