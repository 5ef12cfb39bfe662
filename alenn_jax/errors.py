"""The error raised for bad user input (a file, a config field, a dataset row).

`launch.py` prints its message on one line and exits with status 2, without a traceback: the
message itself must say what was wrong, where, and what to do.
"""


class UserInputError(ValueError):
  """Bad input from the user; the message names the file or field and the fix."""
