"""Domain errors: each carries the exit code the command line reports for it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of every command."""

    OK = 0
    VERIFICATION_FAILED = 1
    USAGE = 2
    UNREADABLE = 3
    UNSAFE = 4
    OUTPUT = 5
    INTERNAL = 70  # a bug in reformer-tools (EX_SOFTWARE)
    INTERRUPTED = 130  # SIGINT or SIGTERM, as shells report Ctrl-C
    STDOUT_CLOSED = 141  # stdout closed early (| head): 128 + SIGPIPE, as shells report it


class ReformerToolsError(Exception):
    """Base class. ``str(error)`` is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.UNREADABLE


class UnreadableCheckpointError(ReformerToolsError):
    """The checkpoint is missing, truncated, corrupt or not a Trax checkpoint."""

    exit_code = ExitCode.UNREADABLE


class UnsupportedLayoutError(ReformerToolsError):
    """The checkpoint is readable, but Hugging Face's Reformer cannot represent it."""

    exit_code = ExitCode.UNREADABLE


class WeightlessPositionsError(UnsupportedLayoutError):
    """Positions Trax computes without weights (sin-cos, ...), not named: no command guesses which."""


class UnsafeCheckpointError(ReformerToolsError):
    """The pickle asks for something outside the allow-list; nothing of it ran."""

    exit_code = ExitCode.UNSAFE


class ConfigError(ReformerToolsError):
    """The model configuration (config.json or config.gin) is unusable."""

    exit_code = ExitCode.USAGE


class UsageError(ReformerToolsError):
    """The command was asked for something it cannot do as stated."""

    exit_code = ExitCode.USAGE


class MappingError(ReformerToolsError):
    """The checkpoint's arrays do not match the configuration."""

    exit_code = ExitCode.VERIFICATION_FAILED


class OutputRejectedError(ReformerToolsError):
    """``convert --verify``: the finished output differs from the checkpoint, so it was not put in place."""

    exit_code = ExitCode.VERIFICATION_FAILED


class OutputError(ReformerToolsError):
    """The output could not be written; nothing was left behind."""

    exit_code = ExitCode.OUTPUT


class VocabularyError(ReformerToolsError):
    """The vocabulary file given for the model is unusable, or does not fit the model."""

    exit_code = ExitCode.USAGE
