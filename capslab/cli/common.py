"""What every command shares: the consoles and the turning of user errors into one line and exit 2."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from ruamel.yaml.error import YAMLError

from capslab.errors import CapslabError, CapslabWarning

DEBUG_ENV = "CAPSLAB_DEBUG"  # CAPSLAB_DEBUG=1: let the traceback through
USER_ERRORS = (CapslabError, ValidationError, YAMLError)

out = Console(highlight=False, soft_wrap=True)  # results, progress
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def message(exc: BaseException) -> str:
    """The user-facing text of an error: CapslabError's own, one line per pydantic problem, YAML's first."""
    if isinstance(exc, ValidationError):
        return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, YAMLError) and not isinstance(exc, CapslabError):
        return f"invalid YAML: {' '.join(str(exc).split())[:200]}"
    return str(exc)


def out_of_memory(exc: BaseException) -> bool:
    """A CPU or CUDA allocation failure (torch raises RuntimeError subclasses with these texts)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def one_line_warnings() -> None:
    """Print capslab's own warnings (a plugin left out, ...) as one ``warning:`` line, without file and line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CapslabWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def report(exc: BaseException) -> None:
    for line in message(exc).splitlines() or [type(exc).__name__]:
        typer.echo(f"error: {line}", err=True)


def user_errors(fn: F) -> F:
    """Wrap a command: a user error prints its message on stderr and exits 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if debug() or not out_of_memory(exc):
                raise
            typer.echo(
                "error: out of memory "
                f"({' '.join(str(exc).split())[:120] or type(exc).__name__}); use a smaller train.batch_size "
                "(or train.eval_batch_size / --batch-size) or a smaller model",
                err=True,
            )
            raise typer.Exit(code=2) from None
        except USER_ERRORS as exc:
            if debug():
                raise
            report(exc)
            raise typer.Exit(code=getattr(exc, "exit_code", 2)) from None

    return wrapper  # type: ignore[return-value]
