"""What the dispatcher learnt about each Icareus account while running its plans: the user id a
completed ADD_USER returned (later requests planned before it existed need it), and a rejected
ADD_USER (the rest of that plan for the account is DEPENDENCY_REJECTED without a call). Memory
only: after a restart a request without user id looks the user up in Icareus by account key."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from icareus_bridge.core.model import ProvisioningRequest

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class RejectedRegistration:
    """An ADD_USER that Icareus refused, within the plan of `event_id`."""

    request_id: str
    event_id: str
    error_code: str


class AccountOutcomes:
    """Per account key (one Icareus user per subscription and distributor), least recently
    used accounts forgotten beyond `capacity`."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._user_ids: OrderedDict[str, str] = OrderedDict()
        self._rejected: OrderedDict[str, RejectedRegistration] = OrderedDict()

    def user_id(self, account_key: str) -> str | None:
        user_id = self._user_ids.get(account_key)
        if user_id is not None:
            self._user_ids.move_to_end(account_key)
        return user_id

    def registered(self, account_key: str, user_id: str) -> None:
        """A completed ADD_USER (or a user found in Icareus)."""
        self._rejected.pop(account_key, None)
        self._remember(self._user_ids, account_key, user_id)

    def removed(self, account_key: str) -> None:
        """A completed REMOVE_USER: the user id is gone with the user."""
        self._user_ids.pop(account_key, None)

    def registration_rejected(self, request: ProvisioningRequest, error_code: str) -> None:
        self._user_ids.pop(request.account_key, None)
        self._remember(
            self._rejected,
            request.account_key,
            RejectedRegistration(request.request_id, request.event_id, error_code),
        )

    def blocking_rejection(self, request: ProvisioningRequest) -> RejectedRegistration | None:
        """The rejected ADD_USER that this request depends on: same account, same plan."""
        rejected = self._rejected.get(request.account_key)
        if rejected is None or rejected.event_id != request.event_id:
            return None
        if rejected.request_id == request.request_id:
            return None
        return rejected

    def resolve_user_id(self, request: ProvisioningRequest) -> str | None:
        """The request's own user id, else the one learnt from its account's ADD_USER."""
        return request.user_id or self.user_id(request.account_key)

    def _remember(self, table: OrderedDict[str, V], key: str, value: V) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._capacity:
            table.popitem(last=False)


__all__ = ["AccountOutcomes", "RejectedRegistration"]
