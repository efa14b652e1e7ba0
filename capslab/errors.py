"""User-facing errors: the CLI prints each as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CapslabError(Exception):
    """A mistake the user can fix (bad recipe, unknown plugin, missing file); exit code 2."""

    exit_code = 2


class PluginError(CapslabError):
    """A plugin failed to import, misspelt a hook, or clashed with another plugin."""


class CapslabWarning(UserWarning):
    """Something the user should know that did not stop the command; the CLI prints it as one line."""


class PluginWarning(CapslabWarning):
    """A plugin was left out (it is broken) or registered nothing."""


class UnknownNameError(CapslabError, KeyError):
    """A registry lookup for a name nobody registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], failed: dict[str, str] | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        self.failed = dict(failed or {})  # plugins left out as broken: the name may have been theirs
        super().__init__(str(self))

    def __str__(self) -> str:
        known = ", ".join(self.known) or "(none: run pip install -e .)"
        broken = (
            f"; left out as broken: plugin {', '.join(map(repr, self.failed))} (capslab plugins says why)"
            if self.failed
            else ""
        )
        return f"unknown {self.kind} {self.name!r}{did_you_mean(self.name, self.known)}; known: {known}{broken}"


class TrainingDiverged(CapslabError):
    """The loss or a gradient became NaN or infinite; the run stops (exit 1), its last finite checkpoint kept."""

    exit_code = 1


class DataError(CapslabError):
    """A missing or malformed data file."""


class CheckpointError(CapslabError):
    """A missing, corrupt or mismatched checkpoint."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
