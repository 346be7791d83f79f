"""The sandbox that runs generated code: pool API, sandboxed process, judge, wire format, cgroups.

May import: mtp_bench.api.

The pool API is re-exported here (`from mtp_bench.execution import run_programs`).
"""

from mtp_bench.execution.judge import Program, split_program  # noqa: F401
from mtp_bench.execution.pool import (  # noqa: F401  the pool API at the package path
    ExecResult,
    SandboxConfig,
    describe_isolation,
    hidden_paths,
    hide_path,
    isolation_report,
    run_program,
    run_programs,
)
