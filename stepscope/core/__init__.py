"""The engine every protocol's work flows through, protocol-neutral: the records crossing seams, the poller, the
pipeline, the checkpoint store and span backlog, the lifecycle, and the API's health."""
