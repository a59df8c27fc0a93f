"""The domain, pure: CRM events, the state machine that plans Icareus requests, results folded
back into state, the event's rules, the provider's settings and redaction; no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING

from icareus_bridge.lazy import exports

if TYPE_CHECKING:
    from icareus_bridge.core.feedback import apply_result, observed_state, rejection_result
    from icareus_bridge.core.model import (
        AccountState,
        Action,
        ActionCode,
        Decision,
        InstalledItem,
        LifecycleEvent,
        LifeCycleState,
        ProvisioningRequest,
        ProvisioningResult,
        RejectionCode,
        RequestType,
        Service,
        ServiceState,
        Subscriber,
        SubscriberProfile,
        Subscription,
        SubscriptionRecord,
        SubscriptionState,
        product_order,
        sorted_products,
    )
    from icareus_bridge.core.plan import account_key, plan
    from icareus_bridge.core.provider import CrossCheckError, Distributor, ProviderSettings
    from icareus_bridge.core.redaction import REDACTED, redact
    from icareus_bridge.core.validation import check_event, check_event_size, check_state_of

# Imported on first use, so importing the package loads none of its modules.
_EXPORTS: dict[str, str] = {
    "AccountState": "icareus_bridge.core.model",
    "Action": "icareus_bridge.core.model",
    "ActionCode": "icareus_bridge.core.model",
    "CrossCheckError": "icareus_bridge.core.provider",
    "Decision": "icareus_bridge.core.model",
    "Distributor": "icareus_bridge.core.provider",
    "InstalledItem": "icareus_bridge.core.model",
    "LifeCycleState": "icareus_bridge.core.model",
    "LifecycleEvent": "icareus_bridge.core.model",
    "ProviderSettings": "icareus_bridge.core.provider",
    "ProvisioningRequest": "icareus_bridge.core.model",
    "ProvisioningResult": "icareus_bridge.core.model",
    "REDACTED": "icareus_bridge.core.redaction",
    "RejectionCode": "icareus_bridge.core.model",
    "RequestType": "icareus_bridge.core.model",
    "Service": "icareus_bridge.core.model",
    "ServiceState": "icareus_bridge.core.model",
    "Subscriber": "icareus_bridge.core.model",
    "SubscriberProfile": "icareus_bridge.core.model",
    "Subscription": "icareus_bridge.core.model",
    "SubscriptionRecord": "icareus_bridge.core.model",
    "SubscriptionState": "icareus_bridge.core.model",
    "account_key": "icareus_bridge.core.plan",
    "apply_result": "icareus_bridge.core.feedback",
    "check_event": "icareus_bridge.core.validation",
    "check_event_size": "icareus_bridge.core.validation",
    "check_state_of": "icareus_bridge.core.validation",
    "observed_state": "icareus_bridge.core.feedback",
    "plan": "icareus_bridge.core.plan",
    "product_order": "icareus_bridge.core.model",
    "redact": "icareus_bridge.core.redaction",
    "rejection_result": "icareus_bridge.core.feedback",
    "sorted_products": "icareus_bridge.core.model",
}

__all__ = [
    "REDACTED",
    "AccountState",
    "Action",
    "ActionCode",
    "CrossCheckError",
    "Decision",
    "Distributor",
    "InstalledItem",
    "LifeCycleState",
    "LifecycleEvent",
    "ProviderSettings",
    "ProvisioningRequest",
    "ProvisioningResult",
    "RejectionCode",
    "RequestType",
    "Service",
    "ServiceState",
    "Subscriber",
    "SubscriberProfile",
    "Subscription",
    "SubscriptionRecord",
    "SubscriptionState",
    "account_key",
    "apply_result",
    "check_event",
    "check_event_size",
    "check_state_of",
    "observed_state",
    "plan",
    "product_order",
    "redact",
    "rejection_result",
    "sorted_products",
]

__getattr__ = exports(__name__, _EXPORTS)
