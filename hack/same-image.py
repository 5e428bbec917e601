#!/usr/bin/env python3
"""Checks that two OCI archives from hack/image.sh are the same image: the same configuration
(user, entrypoint, command, labels, environment), one layer holding exactly /cleanslate, binaries of
the same size within 1% that print the same version. Byte equality is not asked for: a binary built
in another Cargo target directory embeds that directory's paths.

usage: hack/same-image.py A.tar B.tar
"""
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile


def blob(archive, digest):
    algorithm, value = digest.split(":")
    return archive.extractfile(f"blobs/{algorithm}/{value}").read()


def load(path):
    archive = tarfile.open(path)
    index = json.loads(archive.extractfile("index.json").read())
    manifest = json.loads(blob(archive, index["manifests"][0]["digest"]))
    config = json.loads(blob(archive, manifest["config"]["digest"]))["config"]
    layers = manifest["layers"]
    if len(layers) != 1:
        sys.exit(f"{path}: {len(layers)} layers, expected one")
    layer = tarfile.open(fileobj=io.BytesIO(blob(archive, layers[0]["digest"])), mode="r:*")
    files = sorted(m.name.lstrip("./") for m in layer.getmembers() if m.isfile())
    binary = layer.extractfile(layer.getmember(next(m.name for m in layer.getmembers() if m.name.lstrip("./") == "cleanslate"))).read()
    kept = {k: config.get(k) for k in ("User", "Entrypoint", "Cmd", "Labels", "Env", "WorkingDir")}
    return kept, files, binary


def version(binary):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cleanslate")
        with open(path, "wb") as f:
            f.write(binary)
        os.chmod(path, 0o755)
        return subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()


(config_a, files_a, bin_a), (config_b, files_b, bin_b) = load(sys.argv[1]), load(sys.argv[2])
problems = []
if config_a != config_b:
    problems.append(f"configurations differ: {config_a} vs {config_b}")
if files_a != ["cleanslate"] or files_b != ["cleanslate"]:
    problems.append(f"layer files: {files_a} vs {files_b}")
if abs(len(bin_a) - len(bin_b)) > len(bin_a) / 100:
    problems.append(f"binary sizes: {len(bin_a)} vs {len(bin_b)} bytes")
if version(bin_a) != version(bin_b):
    problems.append(f"versions: {version(bin_a)!r} vs {version(bin_b)!r}")
if problems:
    sys.exit("same-image: " + "; ".join(problems))
print(f"same-image: same configuration, one file /cleanslate ({len(bin_a)} and {len(bin_b)} bytes), {version(bin_a)}")
