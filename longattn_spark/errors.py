"""Errors a user can act on. The CLI prints them as one line, without a stack trace."""


class UserFacingError(Exception):
    """Base of every error whose message names the option, file, table or row at fault."""


class ConfigError(UserFacingError, ValueError):
    """A configuration value or option is wrong."""


class TableError(UserFacingError, RuntimeError):
    """A table is missing, unreadable or has an incompatible schema."""


class InputError(UserFacingError, ValueError):
    """The job's input (files, tokenizer, model) cannot be used."""


class AccountingError(UserFacingError, RuntimeError):
    """A job cannot account for every input it read (a document is in no table)."""
