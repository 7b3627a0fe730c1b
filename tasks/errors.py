"""A configuration error in a run: one ERROR line with the fix, no traceback, the run Failed.

Left alone, Prefect logs an exception that ends a run three times with its traceback: the
task's "Task run failed with exception", the flow's "Encountered exception during execution",
and, in a worker's process, "Engine execution exited with unexpected exception". For bad
input the message is the whole story: the flow ends Failed without raising, and the records
that would only repeat it with a traceback are dropped.

Likewise, once a run is stopped (a cancel, SIGTERM, Ctrl-C), the backup flow says so in one
WARNING line, and what the stop itself ended logs no ERROR (`_QuietStop`).
"""

from __future__ import annotations

import functools
import inspect
import logging

from prefect.states import Failed

from site_backup.errors import ConfigurationError
from site_backup.retry import STOP


def task_reports_configuration_error(fn):
    """For a task function: Prefect's "Finished in state Failed(... ConfigurationError: ...)"
    line is the run's one line about the error; the flow must not log it again."""

    if inspect.isgeneratorfunction(fn):  # Prefect must still see a generator task (list-files streams)
        @functools.wraps(fn)
        def generator_task_body(*args, **kwargs):
            try:
                return (yield from fn(*args, **kwargs))
            except ConfigurationError as exc:
                exc.logged = True
                raise

        return generator_task_body

    @functools.wraps(fn)
    def task_body(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            exc.logged = True
            raise

    return task_body


def flow_fails_on_configuration_error(fn):
    """For a flow function: a ConfigurationError ends the run Failed with the error as its
    message, logged once (by the task it came from, or here)."""

    @functools.wraps(fn)
    def flow_body(*args, **kwargs):
        from prefect import get_run_logger

        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            if not getattr(exc, "logged", False):
                get_run_logger().error(str(exc))
            return Failed(data=exc, message=str(exc))

    return flow_body


class _NoConfigurationTracebacks(logging.Filter):
    """Drops Prefect's records that carry a ConfigurationError's traceback: the task's
    "Task run failed with exception" and the worker process's last "Engine execution exited
    with unexpected exception" (it raises the Failed state's error once more)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConfigurationError))


class _QuietStop(logging.Filter):
    """Once this process's runs are stopped (a cancel, SIGTERM, Ctrl-C), what ends unfinished
    was ended by the stop, which the backup flow reports in one WARNING line: the traceback
    records of its task runs and of the engine's exit (it raises the Cancelled state's
    summary once more) are dropped, and "Finished in state ..." or "Crash detected!" lines
    are INFO, not ERROR. Before a stop nothing is changed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not STOP.is_set():
            return True
        if record.exc_info:
            return False
        if record.getMessage().startswith(("Finished in state", "Crash detected!")):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_NoConfigurationTracebacks())
    logging.getLogger(_name).addFilter(_QuietStop())
