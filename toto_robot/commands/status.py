"""Exit statuses and the exceptions that mean bad input, shared by every command (the README's table). Plain
Python, so commands that must start fast (toto-store) import them without the entry point's torch."""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# TimeoutError: a store's lock held past its timeout by another process; the message names the holder's PID.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                           TimeoutError)
