"""The mapping kit every protocol's pure mapping is built from: attribute and label keys, deterministic ids, the
shared metric families' observations and the `invoke_agent` span. No I/O, no SDK objects, no clock."""
