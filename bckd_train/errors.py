"""The one error type the command line reports without a traceback."""


class UserError(ValueError):
    """A wrong argument, or a file that is missing or not what it should be. The
    message names the argument or file and says what to do; ``python -m bckd_train``
    prints it as one line and exits 2. Everything else is a programming error and
    keeps its traceback."""
