"""The one exception type for bad input.

Anything a user has to fix (a missing dataset, a corrupt image, a wrong config key,
missing credentials) is raised as :class:`InputError` with one message that names
the file or key. The command line prints that message alone, without a traceback,
and exits with status 1; everything written before the error stays in place.
"""


class InputError(ValueError):
    """Bad input the user must fix; the message names the offending file or key."""


def run_reporting_input_errors(fn, *args) -> int:
    """Call ``fn(*args)``; an :class:`InputError` becomes one ``error:`` line on stderr
    and exit status 1 (no traceback). Returns the process exit status."""
    import sys

    try:
        fn(*args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
