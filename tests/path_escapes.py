"""Request targets that leave ``/v4.0/words/``: refused by the pure rule (unit) and, sent byte
for byte, by the running proxy (integration)."""

from __future__ import annotations

# Every one of these names (or may name, once decoded upstream) a path outside /v4.0/words/.
ESCAPES = [
    "/v4.0/words/../cells/x",
    "/v4.0/words/%2e%2e/cells/x",
    "/v4.0/words/%2E%2E/cells/x",
    "/v4.0/words/..%2fcells/x",
    "/v4.0/words/..%2Fcells/x",
    "/v4.0/words/.%2e/cells/x",
    "/v4.0/words/%2e./cells/x",
    "/v4.0/words/./../cells/x",
    "/v4.0/words/%2e/%2e%2e/cells/x",
    "/v4.0/words/..;/cells/x",
    "/v4.0/words/..%5ccells/x",
    "/v4.0/words/%252e%252e/cells/x",
    "/v4.0/words/x/../../cells/x?folder=/v4.0/words/",
]
