"""The project's documented error types. Everything a user can cause by bad input raises one of these."""


class NoisysegError(Exception):
    """Base class: bad input or configuration. The message names the file or option at fault."""


class DataError(NoisysegError):
    """A data folder, image or mask is missing, unreadable or inconsistent."""


class ConfigError(NoisysegError):
    """A configuration value is invalid or names an unknown plug-in."""


class DataWarning(UserWarning):
    """A file was loaded with a documented fix-up (converted to RGB, mask thresholded, ...)."""
