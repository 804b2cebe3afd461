"""Repack the naive way, as a baseline: extract everything, add the file, recompress.

This is what a repack step built on tarfile does: extract the archive to a
temporary folder, copy hyperparameters.json into it, and write a new archive with
`tarfile.open(..., "w:gz")` (compression level 9). It needs the model's size on
disk twice besides the input.

Usage: python3 naive_repack.py ARCHIVE HYPERPARAMETERS OUTPUT TEMP_PARENT
"""

import os
import shutil
import sys
import tarfile
import tempfile


def main():
    archive, hyperparameters, output, temp_parent = sys.argv[1:5]
    with tempfile.TemporaryDirectory(dir=temp_parent) as folder:
        with tarfile.open(archive, "r:gz") as source:
            source.extractall(folder, filter="data")
        shutil.copyfile(hyperparameters, os.path.join(folder, "hyperparameters.json"))
        with tarfile.open(output, "w:gz") as target:
            for name in sorted(os.listdir(folder)):
                target.add(os.path.join(folder, name), arcname=name)


if __name__ == "__main__":
    main()
