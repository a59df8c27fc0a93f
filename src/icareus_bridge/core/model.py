"""The domain's vocabulary: CRM lifecycle events in, what the bridge knows about a subscription,
and the Icareus provisioning requests and CRM rejections that `plan` decides. Pure data, no I/O."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SubscriptionState(StrEnum):
    DRAFT = "DRAFT"
    EFFECTIVE = "EFFECTIVE"
    NOT_EFFECTIVE = "NOT_EFFECTIVE"
    IN_RESTING = "IN_RESTING"
    SHORT_TERM_EFFECTIVE = "SHORT_TERM_EFFECTIVE"
    SHORT_TERM_NOT_EFFECTIVE = "SHORT_TERM_NOT_EFFECTIVE"
    REGRETTED = "REGRETTED"
    CANCELLED = "CANCELLED"


class ServiceState(StrEnum):
    DRAFT = "DRAFT"
    EFFECTIVE = "EFFECTIVE"
    NOT_EFFECTIVE = "NOT_EFFECTIVE"
    IN_RESTING = "IN_RESTING"
    SHORT_TERM_EFFECTIVE = "SHORT_TERM_EFFECTIVE"
    SHORT_TERM_NOT_EFFECTIVE = "SHORT_TERM_NOT_EFFECTIVE"
    REGRETTED = "REGRETTED"
    CANCELLED = "CANCELLED"
    SWAPPED = "SWAPPED"
    REMOVED = "REMOVED"


EFFECTIVE_SERVICE_STATES = frozenset({ServiceState.EFFECTIVE, ServiceState.SHORT_TERM_EFFECTIVE})
TERMINATED_SUBSCRIPTION_STATES = frozenset(
    {SubscriptionState.CANCELLED, SubscriptionState.REGRETTED}
)


class ActionCode(StrEnum):
    """CRM behaviour codes of DOMAIN.md; any other code is bad input (DLQ, stage validate)."""

    BECOME_SUBSCRIBER = "BECOME_SUBSCRIBER"
    ACTIVATE_SUBSCRIPTION = "ACTIVATE_SUBSCRIPTION"
    DEACTIVATE_SUBSCRIPTION = "DEACTIVATE_SUBSCRIPTION"
    TERMINATE_SUBSCRIPTION = "TERMINATE_SUBSCRIPTION"
    REST_SUBSCRIPTION = "REST_SUBSCRIPTION"
    END_SUBSCRIPTION_RESTING = "END_SUBSCRIPTION_RESTING"
    SHORT_TERM_ACTIVATION = "SHORT_TERM_ACTIVATION"
    END_SHORT_TERM_ACTIVATION = "END_SHORT_TERM_ACTIVATION"
    SHORT_TERM_DEACTIVATION = "SHORT_TERM_DEACTIVATION"
    END_SHORT_TERM_DEACTIVATION = "END_SHORT_TERM_DEACTIVATION"
    CHANGE_SUBSCRIPTION_DISTRIBUTION = "CHANGE_SUBSCRIPTION_DISTRIBUTION"
    ADD_SERVICE = "ADD_SERVICE"
    REMOVE_SERVICE = "REMOVE_SERVICE"
    START_SERVICE = "START_SERVICE"
    STOP_SERVICE = "STOP_SERVICE"
    SWAP_SERVICE = "SWAP_SERVICE"
    ADD_INSTALLED_ITEM = "ADD_INSTALLED_ITEM"
    REMOVE_INSTALLED_ITEM = "REMOVE_INSTALLED_ITEM"
    SWAP_INSTALLED_ITEM = "SWAP_INSTALLED_ITEM"
    MOVE_INSTALLED_ITEM = "MOVE_INSTALLED_ITEM"
    RESET_SUBSCRIPTION = "RESET_SUBSCRIPTION"


class RequestType(StrEnum):
    """The six Icareus requests, in the order they run within one account."""

    ADD_USER = "ADD_USER"
    REMOVE_DEVICE = "REMOVE_DEVICE"
    ADD_DEVICE = "ADD_DEVICE"
    CANCEL_PRODUCTS = "CANCEL_PRODUCTS"
    ACTIVATE_PRODUCTS = "ACTIVATE_PRODUCTS"
    REMOVE_USER = "REMOVE_USER"


class LifeCycleState(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


class RejectionCode(StrEnum):
    ACCOUNT_NOT_REGISTERED = "ACCOUNT_NOT_REGISTERED"
    VIEWING_POINT_LIMIT = "VIEWING_POINT_LIMIT"
    UNMAPPED_PRODUCT = "UNMAPPED_PRODUCT"
    UNMAPPED_PHYSICAL_GOOD = "UNMAPPED_PHYSICAL_GOOD"
    PRODUCT_NOT_ALLOWED = "PRODUCT_NOT_ALLOWED"
    PROVIDER_NOT_EFFECTIVE = "PROVIDER_NOT_EFFECTIVE"
    ICAREUS_REJECTED = "ICAREUS_REJECTED"
    DEPENDENCY_REJECTED = "DEPENDENCY_REJECTED"


# --- the event CRM publishes (mirrors schemas/subscription_lifecycle_event.avsc) -------------


class Action(_Frozen):
    code: str
    classification: str | None = None


class Subscriber(_Frozen):
    account_number: str
    first_name: str
    last_name: str
    email: str | None = None
    phone: str | None = None
    country_code: str | None = None
    postal_code: str | None = None
    city: str | None = None


class Service(_Frozen):
    id: str
    product_code: str
    state: ServiceState
    distributor: str | None = None


class InstalledItem(_Frozen):
    id: str
    serial_number: str
    physical_good_code: str
    distributor: str | None = None


class Subscription(_Frozen):
    id: str
    number: str
    version: int
    state: SubscriptionState
    subscriber: Subscriber
    services: tuple[Service, ...] = ()
    installed_items: tuple[InstalledItem, ...] = ()


class LifecycleEvent(_Frozen):
    event_id: str
    occurred_at: int = Field(description="epoch milliseconds")
    action: Action
    subscription: Subscription


# --- what the bridge knows Icareus holds -----------------------------------------------------


class AccountState(_Frozen):
    """One Icareus user: one per (subscription, Icareus distributor)."""

    distributor: str
    account_key: str
    registered: bool = False
    user_id: str | None = None
    products: frozenset[str] = frozenset()  # Icareus product ids
    devices: dict[str, str] = Field(default_factory=dict)  # serial number -> device type


class SubscriptionRecord(_Frozen):
    """The state changelog value for one subscription (key: subscription id)."""

    subscription_id: str
    subscription_number: str = ""
    last_version: int = -1
    last_event_id: str | None = None
    snapshot: Subscription | None = None
    # distributor code -> account, in order of first appearance (viewing-point order)
    accounts: dict[str, AccountState] = Field(default_factory=dict)
    parked_behind: str | None = None  # request id that parked the key, if parked


# --- what plan decides ----------------------------------------------------------------------


class SubscriberProfile(_Frozen):
    """The ADD_USER parameters; personal data, never logged."""

    first_name: str
    last_name: str
    email: str | None = None
    phone: str | None = None
    country_code: str | None = None
    postal_code: str | None = None
    city: str | None = None


class ProvisioningRequest(_Frozen):
    request_id: str
    number: str
    type: RequestType
    subscription_id: str
    subscription_number: str
    distributor: str
    account_key: str
    event_id: str
    action_code: str
    sequence: int
    created_at: int  # epoch ms (the event's occurred_at: plan reads no clock)
    user_id: str | None = None  # known Icareus user id, None when ADD_USER is in the same plan
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None
    profile: SubscriberProfile | None = None


class Rejection(_Frozen):
    """A CRM error decided by the planner: nothing is sent, CRM sees it as a REJECTED result."""

    request_id: str
    number: str
    type: RequestType
    code: RejectionCode
    distributor: str
    account_key: str
    detail: str
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None


class SkipReason(StrEnum):
    STALE_VERSION = "STALE_VERSION"
    DUPLICATE_EVENT = "DUPLICATE_EVENT"


class Decision(_Frozen):
    state: SubscriptionRecord
    requests: tuple[ProvisioningRequest, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    skipped: SkipReason | None = None
