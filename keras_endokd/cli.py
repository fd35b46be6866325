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


def parse_flags(flag_values, argv, doc: str, positional: bool = False):
    """Parses `argv` into a command's own `FlagValues`: (positional arguments, exit code or None).

    Commands keep their flags in their own FlagValues (several define --model or --dataset, and
    tests run them in one process), so absl's `app.run` parsing is not used. `--help` prints the
    module docstring and the flags; a malformed flag, or a positional argument where none is
    expected, is a one-paragraph error. It first quiets TensorFlow's native log noise, which only
    works before TensorFlow is imported (see `keras_endokd.console`).
    """
    from absl import flags

    from keras_endokd.console import quiet_native_logs

    quiet_native_logs()

    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(doc + "\n" + flag_values.get_help(include_special_flags=False))
        return [], 0
    flag_values.unparse_flags()  # main() may run several times in one process (tests)
    try:
        rest = flag_values(argv)[1:]
    except flags.Error as err:
        return [], fail(err)
    if rest and not positional:
        return [], fail(f"unexpected arguments {rest}; every setting is a --flag.")
    return rest, None
