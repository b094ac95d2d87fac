"""The pipeline's exceptions.

Every error a user can cause or fix (bad input, bad config, a mesh that fails
validation) is a :class:`PipelineError`. The CLI prints it as one line on
stderr and exits with status 2; anything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Base class: a problem with the input, the configuration or the result."""


class InputError(PipelineError):
    """The CT input cannot be read or does not describe a usable volume."""


class ConfigError(PipelineError):
    """The configuration file is malformed or asks for something impossible."""


class MeshError(PipelineError):
    """A mesh failed validation (not closed, not manifold, not outward-oriented)."""


class PlanError(ConfigError):
    """The resection plan does not cut the bone the way it must."""


class ManifestError(PipelineError):
    """A batch manifest is malformed or names cases that cannot run."""
