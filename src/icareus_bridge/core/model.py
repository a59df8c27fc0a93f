"""The domain's vocabulary: CRM lifecycle events in, what the bridge knows about a subscription,
and the Icareus provisioning requests and CRM rejections that `plan` decides. Pure data, no I/O.

The models are msgspec Structs (frozen, slotted, untracked by the garbage collector): the
planner builds and reads some twenty of them per event, and a Struct costs a fraction of a
pydantic model to build and to read (docs/BENCHMARKS.md, "native event model"). Constructing
one checks nothing; values from outside come in through `model_validate` /
`model_validate_json` (strict: types, enum values, int64 bounds, no unknown fields) or through
the codec, whose compiled reader builds them from bytes an Avro schema has already typed.
`Model` gives them the small vocabulary the boundary's pydantic models have (`model_dump`,
`model_copy`, `model_validate`, ...), so code reads the same on either side of the boundary.
Pydantic stays at the boundaries: configuration, the simulator's and the archive's own models.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum, StrEnum
from typing import Annotated, Any, Self

import msgspec

# Every integer of the records is written as an Avro long or int: a value outside int64 cannot
# be written (or read back as itself), so it is refused wherever a model is validated.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
Long = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]

ModelError = msgspec.ValidationError
"""What `model_validate` raises: the message names the field (`- at `$.a.b[0]``)."""


def _dump(value: Any, json: bool) -> Any:
    if isinstance(value, Model):
        return value.model_dump(mode="json" if json else "python")
    if isinstance(value, tuple | list):
        items = [_dump(v, json) for v in value]
        return items if json else tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: _dump(v, json) for k, v in value.items()}
    if isinstance(value, frozenset | set):  # product ids: sets have no order, output must
        return list(sorted_products(value))
    if json and isinstance(value, Enum):
        return value.value
    return value


def plain(value: Any) -> Any:
    """`value` with every model in it (at any depth) as its `model_dump()` dict."""
    return _dump(value, False)


class Model(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The base of every domain model. `gc=False` is safe: a model holds strings, numbers,
    enums, tuples, frozensets, dicts and other models, never anything that refers back."""

    def model_dump(
        self,
        *,
        mode: str = "python",
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """The fields as a dict, nested models as dicts (only the `include`d top-level fields,
        without the `exclude`d ones). `mode="json"`: only JSON types (enums as their values,
        tuples as lists). Product-id sets are lists in product order."""
        json = mode == "json"
        names: Iterable[str] = self.__struct_fields__
        if include is not None:
            wanted = set(include)
            names = [n for n in names if n in wanted]
        if exclude is not None:
            unwanted = set(exclude)
            names = [n for n in names if n not in unwanted]
        return {name: _dump(getattr(self, name), json) for name in names}

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A copy with `update`'s fields replaced (not validated, as in pydantic)."""
        return msgspec.structs.replace(self, **update) if update else self

    @classmethod
    def model_validate(cls, obj: Any) -> Self:
        """`obj` (a dict of builtins, nested dicts or models) as a validated model; raises
        ModelError naming the field."""
        return msgspec.convert(obj, cls, strict=True)

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        """JSON text as a validated model, strictly typed; raises ModelError (msgspec's
        DecodeError, its base, for text that is not JSON)."""
        return msgspec.json.decode(text, type=cls, strict=True)

    def model_dump_json(self) -> str:
        return msgspec.json.encode(self.model_dump(mode="json")).decode()


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


class Action(Model, frozen=True):
    code: str
    classification: str | None = None


class Subscriber(Model, frozen=True):
    account_number: str
    first_name: str
    last_name: str
    email: str | None = None
    phone: str | None = None
    country_code: str | None = None
    postal_code: str | None = None
    city: str | None = None


class Service(Model, frozen=True):
    id: str
    product_code: str
    state: ServiceState
    distributor: str | None = None


class InstalledItem(Model, frozen=True):
    id: str
    serial_number: str
    physical_good_code: str
    distributor: str | None = None


class Subscription(Model, frozen=True):
    id: str
    number: str
    version: Long
    state: SubscriptionState
    subscriber: Subscriber
    services: tuple[Service, ...] = ()
    installed_items: tuple[InstalledItem, ...] = ()


class LifecycleEvent(Model, frozen=True):
    event_id: str
    occurred_at: Long  # epoch milliseconds
    action: Action
    subscription: Subscription


# --- what the bridge knows Icareus holds -----------------------------------------------------


def product_order(product_id: str) -> tuple[int, int, str]:
    """Sort key for Icareus product ids: numeric ids by value, then any others by text. The one
    order of product ids everywhere: plan, state, signing (productIds) and the simulator."""
    if product_id.isdigit():
        return (0, int(product_id), product_id)
    return (1, 0, product_id)


def sorted_products(product_ids: Iterable[str]) -> tuple[str, ...]:
    """Product ids in the ascending order Icareus receives them (comma-separated)."""
    return tuple(sorted(product_ids, key=product_order))


class AccountState(Model, frozen=True):
    """One Icareus user: one per (subscription, Icareus distributor).

    `registered` means Icareus holds (or, with a pending ADD_USER, will hold) the user;
    `user_id` is None until the ADD_USER result is fed back. `registration_rejected` is set when
    Icareus refused ADD_USER: the account stays not registered until an event wants something
    of it again, which plans ADD_USER again (see docs/CORE.md, "refused registration")."""

    distributor: str
    account_key: str
    registered: bool = False
    registration_rejected: bool = False
    user_id: str | None = None
    products: frozenset[str] = frozenset()  # Icareus product ids
    devices: dict[str, str] = {}  # serial number -> device type (a fresh dict per model)


# Fields of SubscriptionRecord that earlier versions carried and that are read and dropped:
# `parked_behind` (schema v1; nothing ever set it, parking lives in the dispatcher's markers).
RETIRED_STATE_FIELDS = ("parked_behind",)


class SubscriptionRecord(Model, frozen=True):
    """The state changelog value for one subscription (key: subscription id)."""

    subscription_id: str
    subscription_number: str = ""
    last_version: Long = -1
    last_event_id: str | None = None
    snapshot: Subscription | None = None
    # distributor code -> account, in order of first appearance (viewing-point order)
    accounts: dict[str, AccountState] = {}

    @classmethod
    def model_validate(cls, obj: Any) -> Self:
        # A state written before a field was retired (an older changelog record, an earlier
        # `explain` output given to --state) still reads; the retired field is dropped.
        if isinstance(obj, dict) and any(f in obj for f in RETIRED_STATE_FIELDS):
            obj = {k: v for k, v in obj.items() if k not in RETIRED_STATE_FIELDS}
        return super().model_validate(obj)

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        return cls.model_validate(msgspec.json.decode(text))


# --- what plan decides ----------------------------------------------------------------------


class SubscriberProfile(Model, frozen=True):
    """The ADD_USER parameters; personal data, never logged."""

    first_name: str
    last_name: str
    email: str | None = None
    phone: str | None = None
    country_code: str | None = None
    postal_code: str | None = None
    city: str | None = None


class ProvisioningRequest(Model, frozen=True):
    request_id: str
    number: str
    type: RequestType
    subscription_id: str
    subscription_number: str
    distributor: str
    account_key: str
    event_id: str
    action_code: str
    sequence: Long
    created_at: Long  # epoch ms (the event's occurred_at: plan reads no clock)
    user_id: str | None = None  # known Icareus user id, None when ADD_USER is in the same plan
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None
    profile: SubscriberProfile | None = None

    def params(self) -> dict[str, object]:
        """The call's own parameters, by request type (what `explain` prints as `params`).

        `user_id` None means the account's ADD_USER is still pending (same or earlier plan):
        the dispatcher resolves the user id by `account_key` (Icareus externalId)."""
        t = self.type
        if t is RequestType.ADD_USER:
            out: dict[str, object] = {"external_id": self.account_key}
            if self.profile is not None:
                out.update(self.profile.model_dump())
            return out
        if t is RequestType.REMOVE_USER:
            return {"user_id": self.user_id}
        if t is RequestType.ACTIVATE_PRODUCTS or t is RequestType.CANCEL_PRODUCTS:
            return {"user_id": self.user_id, "product_ids": list(self.product_ids)}
        if t is RequestType.ADD_DEVICE:
            return {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "device_type": self.device_type,
            }
        return {"user_id": self.user_id, "device_id": self.device_id}


class Rejection(Model, frozen=True):
    """A CRM error decided by the planner: nothing is sent, CRM sees it as a REJECTED result.

    Shares the request id / number / sequence space of its plan (it follows the requests)."""

    request_id: str
    number: str
    type: RequestType
    code: RejectionCode
    distributor: str
    account_key: str
    detail: str
    sequence: Long = 0
    user_id: str | None = None
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None


class SkipReason(StrEnum):
    STALE_VERSION = "STALE_VERSION"
    DUPLICATE_EVENT = "DUPLICATE_EVENT"


class Decision(Model, frozen=True):
    """What `plan` decided for one event. `state` assumes every planned request completes;
    rejected things are not applied. `skipped` says why an event changed nothing at all."""

    state: SubscriptionRecord
    requests: tuple[ProvisioningRequest, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    skipped: SkipReason | None = None


# --- what CRM sees (mirrors schemas/provisioning_result.avsc) ---------------------------------


class ProvisioningResult(Model, frozen=True):
    """The outcome of one request: COMPLETED or REJECTED by Icareus (dispatcher, attempts >= 1)
    or REJECTED by the planner (attempts 0, nothing sent). Also the planner's feedback input:
    the call parameters are carried so the known state can be corrected from the result alone."""

    request_id: str
    number: str
    type: RequestType
    subscription_id: str
    subscription_number: str
    distributor: str
    account_key: str
    event_id: str
    action_code: str
    life_cycle_state: LifeCycleState
    error_code: str | None = None
    error_description: str | None = None
    reference_number: str | None = None  # the Icareus user id, where there is one
    request_payload: str | None = None  # JSON text, secrets and tokens removed
    response_payload: str | None = None  # JSON text, secrets and tokens removed
    attempts: Long = 0
    created_at: Long = 0  # epoch ms
    executed_at: Long | None = None  # epoch ms
    sequence: Long = 0
    user_id: str | None = None
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None
