"""What every command shares: a flag error is one paragraph on stderr and exit code 2.

A stack trace is for bugs; a wrong flag, a missing file or a badly laid-out dataset is the
user's to fix, and the message names the flag or path and what was expected.
"""

import sys


class UsageError(ValueError):
    """A flag value that cannot work; printed as one paragraph, without a stack trace."""


def fail(err) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2
