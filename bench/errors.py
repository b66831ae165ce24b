"""The one kind of error that is the user's to fix.

:class:`UserError` is raised for input the user gave — a name, a setting, a file, a folder's
layout — with a message that says what was wrong and what is expected. The command line
prints it as one line and exits with status 2; any other exception is a bug of the suite
and keeps its traceback. It is a ``ValueError``, so code that validates input and catches
``ValueError`` keeps working.
"""


class UserError(ValueError):
    """Input the user gave is wrong; the message names it and what is expected."""
