"""Install the consortium's oncofl from a startup kit into this Python environment (standard library only).

Provisioning puts into every kit's ``startup/`` the wheel the lead built, the pinned requirements, and
``oncofl_package.json`` (their SHA-256, the version and the hash of the package's code); the kit's signature covers
all of them. This file is copied into each kit as ``startup/install_oncofl.py``, so a hospital installs the reviewed
code before anything of ours is installed:

    python3 <kit>/startup/install_oncofl.py [--no-deps]      # the first time
    oncofl site install --kit <kit> [--no-deps]              # later (also checks the kit's signature first)

Nothing is installed when a file's SHA-256 differs from the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

MANIFEST = "oncofl_package.json"


class KitPackageError(RuntimeError):
    """The kit's package files are missing or do not match their manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_hash_of(files: list[tuple[str, bytes]]) -> str:
    """The package's code hash over (path relative to the package folder, bytes) of every module -- the same value
    :func:`oncofl.provenance.code_hash` computes over an installed package."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def wheel_code_hash(wheel: Path, package: str = "oncofl") -> str:
    """The code hash of the package inside a wheel."""
    with zipfile.ZipFile(wheel) as z:
        files = [
            (n[len(package) + 1 :], z.read(n))
            for n in z.namelist()
            if n.startswith(f"{package}/") and n.endswith(".py") and "/__pycache__/" not in n
        ]
    return code_hash_of(files)


def verify(startup: Path) -> dict:
    """The manifest, once the wheel and the requirements match their SHA-256; raises :class:`KitPackageError`."""
    path = Path(startup) / MANIFEST
    if not path.is_file():
        raise KitPackageError(f"{path} is missing: this kit carries no oncofl package (ask the lead for a new kit)")
    manifest = json.loads(path.read_text())
    for key in ("wheel", "requirements"):
        file = Path(startup) / manifest[key]
        if not file.is_file():
            raise KitPackageError(f"{file} is missing from the kit (ask the lead for the kit again)")
        if sha256_file(file) != manifest[f"{key}_sha256"]:
            raise KitPackageError(
                f"{file.name} does not match the SHA-256 in {MANIFEST}: it changed since provisioning"
            )
    return manifest


def install(startup: Path, python: str = sys.executable, deps: bool = True, target: str | None = None) -> dict:
    """Verify, then pip-install the pinned requirements (unless ``deps`` is false) and the wheel into ``python``'s
    environment (or into the folder ``target``); returns the manifest."""
    manifest = verify(startup)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *(["--target", target] if target else [])]
    if deps:
        subprocess.run([*pip, "-r", str(Path(startup) / manifest["requirements"])], check=True)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(Path(startup) / manifest["wheel"])], check=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the environment to install into (its python)")
    parser.add_argument("--no-deps", action="store_true", help="the requirements are installed already")
    parser.add_argument("--target", default=None, help="install into this folder instead (pip --target)")
    args = parser.parse_args(argv)
    startup = Path(__file__).resolve().parent
    try:
        manifest = install(startup, args.python, deps=not args.no_deps, target=args.target)
    except (KitPackageError, subprocess.CalledProcessError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(f"installed oncofl {manifest['version']}; next: oncofl site configure, then oncofl site preflight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
