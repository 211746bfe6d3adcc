"""The API client kit every protocol reads through: the request core (retries, budget, bounds), credentials, the
retry policy as data, the connection built from the configuration, and tolerant parsing."""

from __future__ import annotations

from stepscope.client.auth import (
    AZURE_AI_SCOPE,
    ApiKeyAuth,
    Auth,
    AzureIdentityAuth,
    BearerAuth,
    TokenFileAuth,
    make_auth,
)
from stepscope.client.retry import (
    RETRYABLE_STATUSES,
    RequestBudget,
    RetryPolicy,
    SleepFn,
    SystemClock,
    parse_go_duration,
    parse_retry_after,
    stop_aware_sleep,
)

__all__ = [
    "AZURE_AI_SCOPE",
    "RETRYABLE_STATUSES",
    "ApiKeyAuth",
    "Auth",
    "AzureIdentityAuth",
    "BearerAuth",
    "RequestBudget",
    "RetryPolicy",
    "SleepFn",
    "SystemClock",
    "TokenFileAuth",
    "make_auth",
    "parse_go_duration",
    "parse_retry_after",
    "stop_aware_sleep",
]
