"""The process runner's guest: runs one activation of an agent in a fresh interpreter.

Started as ``python -I child.py``; needs only the standard library. It reads one
JSON line (the agent's files, the SDK's path and the run's input) from stdin,
then speaks JSON lines with the host: ``{"call": [kind, name, request]}`` out,
a reply in; finally ``{"outcome": {...}}``. The agent's own prints go to stderr,
so they cannot forge protocol lines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile


def main() -> None:
    """Run one activation and exit."""
    proto_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the agent's stdout now lands in the log, never on the protocol channel
    sys.stdout = sys.stderr
    proto_in = sys.stdin
    init = json.loads(proto_in.readline())

    spec = importlib.util.spec_from_file_location("edgenode_guest_agent", init["sdk"])
    assert spec is not None and spec.loader is not None
    sdk = importlib.util.module_from_spec(spec)
    sys.modules["edgenode_guest_agent"] = sdk
    spec.loader.exec_module(sdk)
    _alias_guest_package(sdk)

    def call(kind: str, name: str, request: object) -> dict[str, object]:
        proto_out.write(json.dumps({"call": [kind, name, request]}) + "\n")
        line = proto_in.readline()
        if not line:
            os._exit(3)  # the host went away
        reply: dict[str, object] = json.loads(line)
        return reply

    with tempfile.TemporaryDirectory(prefix="edgenode-agent-") as workdir:
        for path, text in init["files"].items():
            target = os.path.join(workdir, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
        sys.path.insert(0, workdir)
        try:
            module_name = init.get("entry", "main.py").removesuffix(".py").replace("/", ".")
            module = importlib.import_module(module_name)
            entry = sdk.entry_point(module)
        except BaseException as exc:  # noqa: BLE001 - a broken agent module is an outcome, not a crash
            outcome = {"status": "failed", "error": {"type": type(exc).__name__, "message": str(exc)}}
        else:
            outcome = sdk.execute(entry, call, init.get("input"))
        proto_out.write(json.dumps({"outcome": outcome}) + "\n")
        proto_out.flush()
    # Abandoned step threads (timeouts) must not keep the process alive.
    os._exit(0)


def _alias_guest_package(sdk: object) -> None:
    """Make ``from edgenode_guest.agent import StepFailed`` work in agent code."""
    import types

    if "edgenode_guest" not in sys.modules:
        try:
            import edgenode_guest  # noqa: F401
        except ImportError:
            package = types.ModuleType("edgenode_guest")
            package.__path__ = []
            sys.modules["edgenode_guest"] = package
    sys.modules["edgenode_guest.agent"] = sdk  # type: ignore[assignment]


if __name__ == "__main__":
    main()
