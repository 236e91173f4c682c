"""The project's exception hierarchy.

Every message is written for a person who is not a programmer: it says what is
wrong and what to do about it. Lower layers' exceptions are translated into
these at each boundary (``raise ... from exc``), so the app, the worker and the
command line only ever have to catch :class:`BulkGPTError`.
"""

from __future__ import annotations


class BulkGPTError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(BulkGPTError):
    """A setting is missing or invalid; the message names it and where to set it."""


class CSVError(BulkGPTError):
    """An uploaded table cannot be read; the message says what and where."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        if line is not None:
            message = f"Line {line}: {message}"
        super().__init__(message)
        self.line = line


class TemplateError(BulkGPTError):
    """A prompt template cannot be used with the table's columns."""


class StoreError(BulkGPTError):
    """The store (SQLite, PostgreSQL or Supabase) failed or cannot be reached."""


class BatchNotFound(StoreError):
    """No batch with that id exists, or it belongs to someone else."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch with id {batch_id!r} was found.")
        self.batch_id = batch_id


class LabRunNotFound(StoreError):
    """No stored prompt-lab run with that id exists, or it is someone else's."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"No prompt-lab run with id {run_id!r} was found (it may have been "
            "deleted). Run the variants again to get a new one."
        )
        self.run_id = run_id


class LabError(BulkGPTError):
    """A prompt-lab run that cannot be made as asked; the message says what to do."""


class BatchStateError(BulkGPTError):
    """The batch is not in a state that allows the requested action."""


class LimitError(BulkGPTError):
    """An input is larger than a configured limit; the message names the setting."""


class RunnerError(BulkGPTError):
    """A runner cannot be started, reached or stopped; the message names the fix."""
