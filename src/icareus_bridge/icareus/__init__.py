"""The Icareus Suite adapter: `IcareusClient` sends the provisioning calls; every failure is a
`TransientIcareusError` (retried, then dead-lettered; `AuthIcareusError` when Icareus refuses
the bridge's own credentials) or a `PermanentIcareusError` (rejected).
The simulator lives in `icareus_bridge.icareus.simulator`."""

from icareus_bridge.icareus.client import CallResult, IcareusClient, IcareusUser
from icareus_bridge.icareus.errors import (
    AuthIcareusError,
    IcareusError,
    Outcome,
    PermanentIcareusError,
    TlsIcareusError,
    TransientIcareusError,
    TransientReason,
    classify,
    redact,
)

__all__ = [
    "AuthIcareusError",
    "CallResult",
    "IcareusClient",
    "IcareusError",
    "IcareusUser",
    "Outcome",
    "PermanentIcareusError",
    "TlsIcareusError",
    "TransientIcareusError",
    "TransientReason",
    "classify",
    "redact",
]
