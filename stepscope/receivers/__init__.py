"""What arrives from outside: the HTTP surface (/metrics, health, /v1/watch, /v1/webhooks) and the reverse proxy."""
