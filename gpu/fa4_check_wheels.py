"""Check a pinned wheel list against downloaded wheels, so an offline --no-deps install holds no surprise.

  fa4_check_wheels.py LIST DIR [LEFT_OUT ...]   every listed wheel is in DIR, and every requirement of
                                                each (python 3.12, linux, no extras) is met by the list
                                                or named as left out (the host has it, or it is replaced
                                                on purpose); exit 1 otherwise
  fa4_check_wheels.py --list LIST DIR              print DIR/<file> for each listed wheel (for tar)
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HOST = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def pins(list_path: Path) -> dict[str, Version]:
    lines = (line.split("#")[0].strip() for line in list_path.read_text().splitlines())
    return {canonicalize_name(n): Version(v) for n, v in (line.split("==") for line in lines if line)}


def wheels_for(pinned: dict[str, Version], folder: Path) -> dict[str, Path]:
    found = {}
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        if pinned.get(name) == version:
            found[name] = path
    missing = sorted(set(pinned) - set(found))
    if missing:
        sys.exit(f"not downloaded: {', '.join(missing)}")
    return found


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(HOST)]


def main(argv: list[str]) -> None:
    if argv[0] == "--list":
        found = wheels_for(pins(Path(argv[1])), Path(argv[2]))
        print("\n".join(str(Path(argv[2]) / p.name) for p in sorted(found.values())))
        return
    pinned = pins(Path(argv[0]))
    host = {canonicalize_name(n) for n in argv[2:]}
    problems = []
    for name, wheel in sorted(wheels_for(pinned, Path(argv[1])).items()):
        for req in requirements(wheel):
            dep = canonicalize_name(req.name)
            if dep in host:
                continue
            if dep not in pinned:
                problems.append(f"{name} needs {req} (not in the list)")
            elif not req.specifier.contains(pinned[dep], prereleases=True):
                problems.append(f"{name} needs {req}, the list pins {pinned[dep]}")
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(pinned)} wheels, every requirement met by the list or left out ({', '.join(sorted(host))})")


if __name__ == "__main__":
    main(sys.argv[1:])
