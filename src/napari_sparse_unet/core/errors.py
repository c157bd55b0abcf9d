"""One family of errors for "the user's input is wrong".

Every front end (the command line, the Python API, the napari widget) shows the
message of a :class:`UserInputError` as it is: it names the offending value and
says what would work.  Any other exception is a bug and is reported as one
(with its type), never as the user's mistake.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Base class: the user's input (data, settings, files, layers) cannot be used.

    A ``ValueError`` so that code catching ``ValueError`` keeps working.
    """


class InputError(UserInputError):
    """An image, an annotation, a shape or a device cannot be used; the message names the value."""


class ConfigError(UserInputError):
    """A setting has a value that cannot work; the message names it."""


class CheckpointError(UserInputError):
    """A model file is missing, corrupt or not one of ours; the message says which."""


class VolumeIOError(UserInputError):
    """A volume file or folder cannot be read or written; the message names it and says why."""


class DependencyError(UserInputError):
    """An optional package a feature needs is not installed; the message says how to install it."""


def missing_package(purpose: str, package: str, install: str) -> str:
    """The one message for an optional package that a feature needs and that is not installed."""
    return f"{purpose} needs the '{package}' package, which is not installed: {install}"
