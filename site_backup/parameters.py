"""The backup flow's parameters as a pydantic model, so a request is checked before a run
is created. Its fields mirror `flows.backup_site_content.backup_site_content` (a test
compares names, types and defaults); the rules come from the modules that apply them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from site_backup.destination import normalize_prefix, validate_container_name
from site_backup.errors import ConfigurationError
from site_backup.globs import compile_patterns
from site_backup.in_flight import FILES_IN_FLIGHT
from site_backup.mirror import DEFAULT_MAX_DELETE, DeleteLimit
from site_backup.shards import Shard, check_mirror
from site_backup.tiers import check_access_tier

__all__ = ["BackupParameters", "ValidationError", "describe"]


def _checked(rule, value):
    """Apply a rule that raises ConfigurationError; pydantic reports ValueError."""
    try:
        rule(value)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return value


class BackupParameters(BaseModel):
    """What a start request may set. Strict: "5" is not a number and 2.5 is not a whole one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    root_directory: str
    container: str = "backups"
    prefix: str = ""
    credentials_block: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    follow_symlinks: bool = False
    dry_run: bool = False
    refresh: bool = False
    delete_missing: bool = False
    max_delete: int | str = DEFAULT_MAX_DELETE
    checkpoint_block: str | None = None
    checkpoint_days: float | None = Field(None, gt=0, allow_inf_nan=False)
    files_per_batch: int = Field(1000, gt=0)
    mib_per_batch: int = Field(256, gt=0)
    files_in_flight: int = Field(FILES_IN_FLIGHT, gt=0)
    single_put_mib: int = Field(64, gt=0)
    block_size_mib: int = Field(8, gt=0)
    blocks_in_flight: int = Field(4, gt=0)
    retries: int = Field(100, ge=0)
    storage_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    shard: str | None = None
    shard_by: Literal["path", "top-level-folder"] = "path"
    access_tier: str | None = None
    run_manifest: str | None = None

    @field_validator("root_directory")
    @classmethod
    def _root(cls, value: str) -> str:
        if not value:
            raise ValueError("empty: give the directory to back up")
        if "\0" in value:
            raise ValueError("contains a NUL character, which no path can hold")
        return value

    @field_validator("container")
    @classmethod
    def _container(cls, value: str) -> str:
        return _checked(validate_container_name, value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _checked(normalize_prefix, value)

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            try:
                _checked(compile_patterns, [pattern])
            except re.error as exc:  # a glob the translation turns into a bad regular expression
                raise ValueError(f"invalid pattern {pattern!r} ({exc.msg}): check its [...] ranges") from None
        return value

    @field_validator("max_delete")
    @classmethod
    def _max_delete(cls, value: int | str) -> int | str:
        return _checked(DeleteLimit.parse, value)

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        return _checked(Shard.parse, value)

    @field_validator("access_tier")
    @classmethod
    def _access_tier(cls, value: str | None) -> str | None:
        try:
            return check_access_tier(value)  # as Azure spells it
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _mirror_of_a_shard(self):
        _checked(lambda _: check_mirror(Shard.parse(self.shard, self.shard_by), self.delete_missing), None)
        return self

    @field_validator("credentials_block", "checkpoint_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("empty: give a block name or leave the field out")
        return value


def describe(error: ValidationError) -> str:
    """One line naming the field and what is wrong with it (the first problem found)."""
    details = error.errors(include_url=False, include_input=False)
    unknown = sorted(str(d["loc"][0]) for d in details if d["type"] == "extra_forbidden")
    if unknown:
        return f"unknown parameters {unknown}: allowed are {list(BackupParameters.model_fields)}"
    detail = details[0]
    field = ".".join(str(part) for part in detail["loc"]) or "body"
    if detail["type"] == "missing":
        return f"{field} is missing: send the root directory as a JSON string or in an object"
    reason = str(detail["ctx"]["error"]) if detail["type"] == "value_error" else detail["msg"]
    return f"{field}: {reason}"
