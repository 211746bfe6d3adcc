"""The Assistants API as a `StepSource`: HTTP client, credentials, retry policy and request budget."""

from __future__ import annotations

from stepscope.source._retry import (
    RETRYABLE_STATUSES,
    RequestBudget,
    RetryPolicy,
    SleepFn,
    SystemClock,
    parse_go_duration,
    parse_retry_after,
    stop_aware_sleep,
)
from stepscope.source.auth import (
    AZURE_AI_SCOPE,
    ApiKeyAuth,
    Auth,
    AzureIdentityAuth,
    BearerAuth,
    TokenFileAuth,
    make_auth,
)
from stepscope.source.client import AssistantsClient
from stepscope.vocabulary import AUTH_MODES, ENDPOINTS, FLAVORS

__all__ = [
    "AUTH_MODES",
    "AZURE_AI_SCOPE",
    "ENDPOINTS",
    "FLAVORS",
    "RETRYABLE_STATUSES",
    "ApiKeyAuth",
    "AssistantsClient",
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
