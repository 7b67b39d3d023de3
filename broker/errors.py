"""The one exception type broker callers need to catch for a clean one-line exit."""


class BrokerError(Exception):
    """The broker is missing, unreachable or misconfigured; the message says how to fix it."""


class BrokerDenied(BrokerError):
    """The broker answered but refuses this call for good (no permission, no such project or
    subscription): retrying cannot help, so callers give up at once."""
