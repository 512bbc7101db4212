"""Errors that the CLI turns into one clear line and exit code 2."""


class GflowError(Exception):
    """Bad input: a config value, a data directory, an output path, a file to read."""


class ConfigError(GflowError):
    """A config field has a value outside what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field} = {value!r}: {allowed}")
        self.field = field


class FileFormatError(GflowError):
    """A file is not a trajectory this version of gflow can read."""


class UntrustedCode(GflowError):
    """A file names user code (a model factory, data loader or loss reference) and the
    caller did not say it trusts the file's code (``trust_code=True``, ``--trust-code``)."""


class RunBusy(GflowError):
    """Another live process is writing this run (its lock is held, or it created the file first)."""


class OutputExists(GflowError):
    """The output file of a new run exists already (pass overwrite=True to replace it)."""


class DiskFull(Exception):
    """The disk holding a run's file has no room for its next write.

    Not bad input (the CLI exits with 1, not 2). The file keeps every complete save; when
    the lack of space was seen before writing, the run is marked ``stopped`` and resumes
    once there is room. ``unclean``: a write had already failed, after which HDF5 cannot
    close the file in this process (it would crash at exit), so the file is left as a
    killed run leaves it (status ``running``, resumable) and the process should end
    without running HDF5's exit handlers (the CLI does).
    """

    def __init__(self, message: str, unclean: bool = False) -> None:
        super().__init__(message)
        self.unclean = unclean


def one_line(e: BaseException) -> str:
    """An exception for a one-line note: its type and the first line of its message (at most
    200 characters; compilers' messages run to pages)."""
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
