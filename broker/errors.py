"""The one exception type broker callers need to catch for a clean one-line exit."""


class BrokerError(Exception):
    """The broker is missing, unreachable or misconfigured; the message says how to fix it."""
