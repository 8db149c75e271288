"""What binary interface a single-file build needs, read from the file itself.

    python3 packaging/abi.py dist/edgenode.pyz --depends   # the .deb's Depends line
    python3 packaging/abi.py dist/edgenode.pyz --json      # tags, glibc floor, ELF machines

The wheels shiv unpacked into the zipapp keep their ``WHEEL`` files: their tags say which
CPython ABI (``cp311``) and which glibc (``manylinux_2_17``) each compiled part was built
for, and every ``.so`` says in its ELF header which machine it runs on. Runs with the system
Python (standard library only).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import zipfile
from pathlib import Path

#: ELF ``e_machine`` values -> Debian architecture names.
MACHINES = {62: "amd64", 183: "arm64", 3: "i386", 40: "armhf", 243: "riscv64"}
#: The glibc each legacy manylinux tag promises.
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")
_CPYTHON = re.compile(r"^cp(\d)(\d+)$")


def wheel_tags(pyz: Path) -> dict[str, list[str]]:
    """Each bundled distribution's wheel tags (``cp311-cp311-manylinux_2_17_x86_64``, ...)."""
    tags: dict[str, list[str]] = {}
    with zipfile.ZipFile(pyz) as archive:
        for name in archive.namelist():
            if name.endswith(".dist-info/WHEEL"):
                text = archive.read(name).decode()
                dist = name.rsplit("/", 2)[-2].removesuffix(".dist-info")
                tags[dist] = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    return tags


def glibc_floor(tags: dict[str, list[str]]) -> tuple[int, int] | None:
    """The newest glibc any bundled wheel needs (each wheel needs the oldest of its tags); None if none do."""
    floor: tuple[int, int] | None = None
    for dist_tags in tags.values():
        needs = []
        for tag in dist_tags:
            platform = tag.split("-")[-1]
            match = _MANYLINUX.match(platform)
            if match:
                needs.append((int(match.group(1)), int(match.group(2))))
            elif platform.split("_")[0] in _LEGACY:
                needs.append(_LEGACY[platform.split("_")[0]])
        if needs:
            least = min(needs)
            floor = least if floor is None else max(floor, least)
    return floor


def cpython_abis(tags: dict[str, list[str]]) -> set[tuple[int, int]]:
    """The CPython versions whose ABI (``cpXY`` abi tags, not ``abi3``) bundled extensions are built for."""
    found = set()
    for dist_tags in tags.values():
        for tag in dist_tags:
            abi = tag.split("-")[1] if tag.count("-") == 2 else ""
            match = _CPYTHON.match(abi)
            if match:
                found.add((int(match.group(1)), int(match.group(2))))
    return found


def elf_machines(pyz: Path) -> dict[str, str]:
    """Each bundled ELF file (shared objects, executables such as bwrap) and the architecture it names."""
    machines: dict[str, str] = {}
    with zipfile.ZipFile(pyz) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or info.file_size < 64 or name.endswith((".py", ".pyi", ".txt", ".json", ".wasm")):
                continue
            with archive.open(name) as file:
                header = file.read(20)
            if header[:4] != b"\x7fELF":
                continue
            endian = "<" if header[5] == 1 else ">"
            (machine,) = struct.unpack(endian + "H", header[18:20])
            machines[name] = MACHINES.get(machine, f"e_machine={machine}")
    return machines


def depends(pyz: Path, python: tuple[int, int] | None = None) -> str:
    """The .deb ``Depends`` for ``pyz``: the one CPython minor its extensions need, and the glibc floor."""
    tags = wheel_tags(pyz)
    abis = cpython_abis(tags)
    if python is None:
        if len(abis) > 1:
            raise SystemExit(f"{pyz} mixes extensions for several Pythons: {sorted(abis)}")
        python = next(iter(abis), sys.version_info[:2])
    major, minor = python
    parts = [f"python3 (>= {major}.{minor})", f"python3 (<< {major}.{minor + 1})"]
    floor = glibc_floor(tags)
    if floor is not None:
        parts.append(f"libc6 (>= {floor[0]}.{floor[1]})")
    return ", ".join(parts)


def main() -> int:
    """Print the Depends line, the architecture, or everything as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyz", type=Path)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--depends", action="store_true", help="the Debian Depends for its binary interface")
    what.add_argument("--arch", action="store_true", help="the one Debian architecture of its shared objects")
    what.add_argument("--json", action="store_true", help="tags, glibc floor, Python ABIs and ELF machines")
    args = parser.parse_args()
    machines = elf_machines(args.pyz)
    if args.depends:
        print(depends(args.pyz))
    elif args.arch:
        arches = sorted(set(machines.values()))
        if len(arches) != 1:
            print(f"{args.pyz}: shared objects for {arches or 'no architecture'}", file=sys.stderr)
            return 1
        print(arches[0])
    else:
        tags = wheel_tags(args.pyz)
        print(json.dumps({"glibc": glibc_floor(tags), "cpython": sorted(cpython_abis(tags)),
                          "machines": machines, "tags": tags}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
