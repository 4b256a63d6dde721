"""The errors a user fixes by changing their input: one module at the bottom of the layers.

Every layer raises these when a config value, a data file or a plug-in is wrong.
The CLI prints them as one line (no traceback), the runner never retries them
(a fresh attempt would fail the same way), and they are raised before anything
is provisioned wherever the input can be checked that early.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input, already phrased for the user: what, where, and what is allowed."""


class ConfigError(UserInputError):
    """A config value (or a plug-in it names) is wrong."""


class DataError(UserInputError):
    """A data source or one of its rows is wrong; the message names the file, row and field."""
