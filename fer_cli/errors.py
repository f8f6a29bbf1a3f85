"""Errors a user can cause and fix. The CLI turns each into one line on stderr and an exit code."""


class FerError(Exception):
    """Base class: a mistake in what the user asked for, never a bug in fer_cli."""


class SourceError(FerError):
    """An input path, folder, glob or dataset that cannot be used."""


class CheckpointError(FerError):
    """A checkpoint that is missing, corrupt, truncated or not written by fer_cli."""


class ModelError(FerError):
    """An unknown architecture or model name, or models that cannot work together."""


class DeviceError(FerError):
    """A device that was asked for but is not available here."""


class Interrupted(BaseException):
    """A signal asked the run to stop (SIGTERM, SIGHUP): unwound like Ctrl-C, so outputs are finished
    or left untouched and worker processes stopped, then the process exits with 128 + the signal."""

    def __init__(self, signal_number: int):
        super().__init__(f"signal {signal_number}")
        self.signal_number = signal_number
