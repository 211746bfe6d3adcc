"""The test kit: sample records (`samples`), injected fakes (`fakes`) and the helpers the suites share.

Helpers live here, not in `conftest.py` (which holds fixtures only), so tests import them like any module.
The product's own test doubles (`RecordingSpanExporter`, `RecordingMetricSink`, `FakeClock`, `OtlpReceiver`,
`eventually`) ship in `stepscope.testing`.
"""
