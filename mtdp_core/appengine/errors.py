"""Errors of the App Engine front end.

A task's error message is what a person reads in the run's log when the App Engine marks the run
FAILED (the App Engine has no status comment): like the legacy apps' messages, it names the input
and the offending value and says what to give instead.
"""

from __future__ import annotations

from mtdp_core.errors import ConfigurationError, MtdpError


class AppEngineError(MtdpError):
    """A failure of the App Engine front end that the user can fix."""


class TaskInputError(AppEngineError, ConfigurationError):
    """An input under the input folder is missing, malformed or unusable (an unreadable image, a
    zip without examples, arrays of different sizes, ...)."""


class TaskOutputError(AppEngineError):
    """A task's outputs do not match its descriptor (the App Engine would mark the run FAILED)."""


class DescriptorError(AppEngineError):
    """A descriptor breaks the schema or a rule the App Engine enforces outside it."""


class ContainerEngineError(AppEngineError):
    """No container engine (podman, docker) is usable, or a build/save/run with it failed."""


class BundleError(AppEngineError):
    """A task bundle (zip of descriptor.yml + image tar) is malformed."""
