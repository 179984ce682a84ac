"""An offline imitation of Aspose Cloud, so tests and users need no account.

Token endpoints, the Words v4.0 storage API, test endpoints under ``/v4.0/sandbox/`` and
fault switches under ``/_sandbox/``; see ``docs/sandbox.md``.
"""

from proxy.sandbox.app import create_sandbox_app
from proxy.sandbox.config import SandboxConfig
from proxy.sandbox.state import STATE, SandboxState

__all__ = ["STATE", "SandboxConfig", "SandboxState", "create_sandbox_app"]
