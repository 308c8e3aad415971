"""The mistakes a user can fix, raised by any layer and printed by the stage runner as one line, exit 2."""


class ParamsError(ValueError):
    """A user mistake in params: the message is one line naming the key, the rule and the value."""


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, bad checkpoint): printed as one line, exit 2."""
