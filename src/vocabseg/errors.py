"""The one exception type for bad input.

Anything a user has to fix (a missing dataset, a corrupt image, a wrong config key,
missing credentials) is raised as :class:`InputError` with one message that names
the file or key. The command line prints that message alone, without a traceback,
and exits with status 1; everything written before the error stays in place.
"""


class InputError(ValueError):
    """Bad input the user must fix; the message names the offending file or key."""
