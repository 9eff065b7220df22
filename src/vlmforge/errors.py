"""User-facing errors: one clear line saying what is wrong and what to do.

The CLI catches `VlmforgeError`, prints its message and exits with code 2, so a user never sees a
traceback for bad input. Library code raises it (or a subclass) for anything the user can fix.
"""


class VlmforgeError(Exception):
    """A problem with the user's input (paths, configs, data) that they can fix."""


class ConfigError(VlmforgeError):
    """A recipe or config that is malformed: unknown key, wrong type, bad value."""


class DataError(VlmforgeError):
    """A data file or record that cannot be used."""


class ModelError(VlmforgeError):
    """A model folder that is missing or is not what it should be."""
