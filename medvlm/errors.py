"""The one exception type for mistakes a user can fix: a bad config value, a missing or
unreadable file, bad data. Command-line entry points print it as one line and exit with
status 2; every other exception is a bug and keeps its traceback."""


class UserError(ValueError):
    """A problem in the user's input, worded for the user: name the file, line or key, the
    value found and what is expected. (A ValueError, so callers that caught ValueError still do.)"""
