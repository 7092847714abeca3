"""tdkit's error types and their exit codes (0 ok, 1 wrong result or not applied, 2 bad input)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class TdkitError(Exception):
    """Base of every error tdkit reports to a user as one line."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(TdkitError):
    """Bad usage or bad input: malformed MLIR, unknown op, bad shape, invalid knob, bad dtype."""

    exit_code = EXIT_BAD_INPUT


class NotAppliedError(TdkitError):
    """A strategy was requested but did not run on the dispatch it targets."""

    exit_code = EXIT_FAILED


class ToolError(TdkitError):
    """An `iree-*` process failed, crashed, hung, or could not be found.

    Carries the command, the exit status, the tail of stderr and a one-line repro. `kind` says
    how it failed: "failed" (non-zero exit or bad output), "crash" (killed by a signal),
    "timeout" (killed after its time limit) or "missing" (tool not found)."""

    exit_code = EXIT_FAILED

    def __init__(self, summary: str, *, argv: list[str], returncode: int | None = None,
                 stderr_tail: str = "", repro: str = "", missing: bool = False,
                 stderr: str = "", kind: str = "failed") -> None:
        self.summary = summary
        self.kind = "missing" if missing else kind
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.stderr = stderr or stderr_tail  # the whole stderr, when the caller kept it
        self.repro = repro
        self.missing = missing
        if missing:
            self.exit_code = EXIT_BAD_INPUT
        super().__init__(summary)

    def one_line(self) -> str:
        """The summary plus the first diagnostic line of stderr and the repro, on one line."""
        lines = self.stderr.splitlines()
        first = next((ln.strip() for ln in lines if "error:" in ln), "")
        if not first:
            first = next((ln.strip() for ln in lines if "error" in ln.lower()), "")
        if not first:
            first = next((ln.strip() for ln in self.stderr_tail.splitlines() if ln.strip()), "")
        parts = [self.summary]
        if first:
            parts.append(first[:300])
        if self.repro:
            parts.append(f"repro: {self.repro}")
        return " | ".join(parts)
