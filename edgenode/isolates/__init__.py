"""Workers: Python and any-language code in WebAssembly isolates.

Python code runs on one shared, pre-initialized runtime component
(``PythonRuntime``, built once per edgenode version by componentize-py against
the ``edgenode:guest`` WIT package in ``edgenode/wit``); a deployment's files are
data it compiles and runs. Any component of the ``worker`` world runs too, and
WASI preview 1 command modules run through ``WasiRunner``. Each request gets a
fresh instance of a cached compiled component, bounded in CPU (epochs), memory (store limits) and wall time, and
reaching the outside only through the host functions its deployment grants.
"""

from __future__ import annotations

from edgenode.isolates.builder import Source, componentize
from edgenode.isolates.capabilities import Grants, HostFunctions, Invocation
from edgenode.isolates.egress import AllowList, HostPattern
from edgenode.isolates.engine import Budget, IsolateEngine
from edgenode.isolates.limits import Limits
from edgenode.isolates.python import Program, PythonRuntime
from edgenode.isolates.runtime import CompiledCache, GuestRequest, GuestResponse, Outcome, Runtime, Usage
from edgenode.isolates.service import DeploySettings, Workers
from edgenode.isolates.wasi import WasiResult, WasiRunner

__all__ = [
    "AllowList",
    "Budget",
    "CompiledCache",
    "DeploySettings",
    "Grants",
    "GuestRequest",
    "GuestResponse",
    "HostFunctions",
    "HostPattern",
    "Invocation",
    "IsolateEngine",
    "Limits",
    "Outcome",
    "Program",
    "PythonRuntime",
    "Runtime",
    "Source",
    "Usage",
    "WasiResult",
    "WasiRunner",
    "Workers",
    "componentize",
]
