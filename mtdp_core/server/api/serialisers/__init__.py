"""JSON shapes of the local server (moto's "responses" templates): one module per domain, plus
the envelopes the client reads (:mod:`.envelopes`). Serialisers are pure functions of rows."""
