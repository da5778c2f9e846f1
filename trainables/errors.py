"""The one error type a user can fix: the CLI prints it as one line and exits 2."""


class ConfigError(ValueError):
    """A configuration value the user gave is not acceptable; the message names it and what is allowed."""
