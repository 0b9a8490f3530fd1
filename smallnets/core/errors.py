"""Exit codes and one-line errors: what every command (and any front-end over the stages) says when it fails.

An expected failure is one line naming the problem and the fix, with an exit code per kind of failure
(EXIT_CODES); the stages raise the built-in exception kinds, and this maps them.
"""

from __future__ import annotations

import errno

EXIT_USAGE = 2  # argparse uses 2 for a bad command line; a bad value is the same kind of mistake
EXIT_NOT_FOUND = 3
EXIT_OUTPUT_REFUSED = 4
EXIT_PORT_IN_USE = 5
EXIT_SYSTEM = 6
EXIT_FAILED = 7
EXIT_PARTIAL = 8
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
# A bare KeyError/IndexError is a bug; the project's LookupErrors (unknown model, target, stored model) are not.
BUILTIN_LOOKUPS = (KeyError, IndexError)
EXIT_CODES = (
    (0, "success"),
    (EXIT_INTERNAL, "internal error (a bug: rerun with --debug and report the traceback)"),
    (EXIT_USAGE, "bad command line or value (e.g. a file that is not an image or an ONNX model)"),
    (EXIT_NOT_FOUND, "not found: an input file or folder, a stored model, a registry name"),
    (EXIT_OUTPUT_REFUSED, "the output folder may not be written (not empty, or holds files smallnets did not write)"),
    (EXIT_PORT_IN_USE, "the port is already in use"),
    (EXIT_SYSTEM, "the system refused (permissions, disk full, network)"),
    (EXIT_FAILED, "a stage failed its own check (weights unavailable, export mismatch, ...)"),
    (EXIT_PARTIAL, "classify: some images could not be classified (the others were)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def exit_code(error: BaseException) -> int:
    """The documented exit code of an expected failure (EXIT_CODES)."""
    if isinstance(error, FileExistsError):
        return EXIT_OUTPUT_REFUSED
    if isinstance(error, FileNotFoundError) or (isinstance(error, LookupError) and type(error) not in BUILTIN_LOOKUPS):
        return EXIT_NOT_FOUND
    if isinstance(error, OSError):
        return EXIT_PORT_IN_USE if error.errno == errno.EADDRINUSE else EXIT_SYSTEM
    if isinstance(error, ValueError):
        return EXIT_USAGE
    if isinstance(error, RuntimeError):
        return EXIT_FAILED
    return EXIT_INTERNAL


def one_line(error: BaseException) -> str:
    """The error's message on one line (library messages can span many)."""
    if isinstance(error, OSError) and error.strerror:  # OSError(errno, text[, filename]): drop the "[Errno N]"
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    elif isinstance(error, KeyError) and error.args:  # str(KeyError) quotes its message
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
