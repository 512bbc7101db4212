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


class RunBusy(GflowError):
    """Another live process is writing this run (its lock is held, or it created the file first)."""


class OutputExists(GflowError):
    """The output file of a new run exists already (pass overwrite=True to replace it)."""
