"""The exception hierarchy of ecosched: every error a user can cause has a class and a clear message."""

from __future__ import annotations


class EcoschedError(Exception):
    """Base class of every error ecosched raises on purpose."""


class ConfigError(EcoschedError):
    """A configuration file, key or value is wrong."""


class RegistryError(EcoschedError):
    """A registry lookup or registration failed (unknown or duplicate name)."""


class InvalidRequestError(EcoschedError):
    """A request cannot be accepted as given; the scheduler state is unchanged."""


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit the model's context length."""


class CapacityError(InvalidRequestError):
    """The request can never fit the KV cache, even with every block free."""


class DuplicateRequestError(InvalidRequestError):
    """A request with the same id is already known to the scheduler."""


class UnknownRequestError(EcoschedError):
    """A request id was never added, or has already finished or been aborted."""


class PredictorError(EcoschedError):
    """A response-length predictor could not produce a prediction."""


class LedgerError(EcoschedError):
    """The KV block ledger was asked for something impossible (a bug in the caller)."""


class LedgerInvariantError(LedgerError):
    """The ledger's accounting equation does not hold (a bug in ecosched)."""


class OutcomeError(EcoschedError):
    """An engine reported an outcome that does not match the scheduler's decisions."""
