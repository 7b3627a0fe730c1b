"""The live progress line of a backup run from a terminal."""

from __future__ import annotations

import sys
import threading


class ProgressLine:
    """A live line on stderr while the run goes on (rich.progress, drawn twice a second):
    files and bytes checked against the listing, bytes sent, rates. It is drawn through
    the console of Prefect's log handler, so log lines print above it, never across it,
    and it is gone once the run ends."""

    def __init__(self, enabled: bool):
        self.enabled, self.stop, self.display, self.drawer = enabled, threading.Event(), None, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column

            from .progress import progress

            # Colours by name: Prefect's console has its own theme, without rich's "bar.*" styles.
            bar = BarColumn(bar_width=24, style="grey23", complete_style="cyan", finished_style="green",
                            pulse_style="cyan")
            self.display = Progress(bar,
                                TextColumn("{task.description}", markup=False,
                                           table_column=Column(no_wrap=True, overflow="ellipsis")),
                                console=_log_console(), transient=True, auto_refresh=False,
                                redirect_stdout=False)  # stdout is the summary's, maybe a pipe or a file
            self.task = self.display.add_task(progress.line(), total=None)
            self.display.start()
            # rich hides the cursor while it draws and shows it again on stop; a run that ends
            # by os._exit (a second signal, the grace timeout) never stops it, so keep it shown.
            self.display.console.show_cursor(True)
            self.drawer = threading.Thread(target=self._loop, daemon=True)
            self.drawer.start()
        return self

    def _loop(self):
        from .progress import progress

        while not self.stop.wait(0.5):
            self.display.update(self.task, description=progress.line(), completed=progress.bytes_done,
                            total=progress.bytes_expected or None, refresh=True)

    def __exit__(self, *exc):
        self.stop.set()
        if self.display is not None:
            self.drawer.join(2)
            self.display.stop()


def _log_console():
    """The rich console Prefect's log lines go through (its handler on the root logger), or
    a console of our own on stderr when Prefect's logging is configured without one."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler
    from rich.console import Console

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and handler.stream is sys.stderr:
            return handler.console
    return Console(stderr=True)
