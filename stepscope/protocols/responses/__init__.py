"""The Responses API (OpenAI's, and Foundry's Agent Service on it) as a protocol: one span per response.

`vocabulary` (its words), `records` and `parsers` (what the API says), `client` (reading it), `mapping` (pure:
responses to spans and metrics), `reader` (one response until terminal), `intake` (responses seen by the proxy,
the listing, webhooks and registrations, each tracked once), `proxied` (what the proxy shows), `discovery` (the
project listing) and `factory` (what `STEPSCOPE_PROTOCOL=responses` builds).
"""
