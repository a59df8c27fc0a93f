"""The provider's domain settings: which CRM distributors are Icareus viewing points, how CRM
product and physical-good codes map to Icareus ids, and whether the provider is effective.

`plan` reads them; `config.py` loads them as the `provider` section (keys unchanged) and
re-exports them, so the core needs no configuration loader."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CrossCheckError(ValueError):
    """A value that contradicts another. `keys` are the dotted keys involved, relative to the
    section that checks them, the one to fix first: the error is reported under it, and each
    key is traced to the environment variable that set it, if any."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distributor(_Section):
    code: str = Field(min_length=1)
    name: str = ""
    allowed_products: list[str] = Field(default_factory=list)


class ProviderSettings(_Section):
    effective: bool = True
    max_viewing_points: int = Field(default=4, ge=1)
    distributors: list[Distributor] = Field(default_factory=list)
    service_mapping: dict[str, str] = Field(default_factory=dict)
    physical_goods_mapping: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_distributors(self) -> ProviderSettings:
        codes = [d.code for d in self.distributors]
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate distributor codes: {', '.join(dupes)}")
        for i, distributor in enumerate(self.distributors):
            unmapped = [p for p in distributor.allowed_products if p not in self.service_mapping]
            if unmapped:
                raise CrossCheckError(
                    f"{', '.join(unmapped)} (distributor {distributor.code}) not a product code "
                    "of provider.service_mapping",
                    f"distributors.{i}.allowed_products",
                    "service_mapping",
                )
        return self


__all__ = ["CrossCheckError", "Distributor", "ProviderSettings"]
