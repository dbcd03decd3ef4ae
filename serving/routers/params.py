"""Request parameters whose documented shape depends on the app's settings.

FastAPI reads a parameter's bounds and description from the endpoint's signature when the
route is created, not per request. ``serving.max_k`` bounds every ``k``, the cookie's name is
``serving.session_cookie`` and the descriptions state the configured defaults, so these
declarations are built per app from :class:`ParamShapes` and the routers that use them are
built per app too (``router(shapes)``). Runtime state never comes from here: endpoints get it
through ``serving.dependencies``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Cookie, Query
from pydantic import Field

from serving.schemas import SESSION_PATTERN
from storage.settings import ServingSettings


@dataclass(frozen=True)
class ParamShapes:
    """The settings that shape the API's documented parameters."""

    max_k: int
    mmr_lambda: float
    exploration: bool
    session_cookie: str

    @classmethod
    def from_settings(cls, serving: ServingSettings) -> ParamShapes:
        return cls(serving.max_k, serving.mmr_lambda, serving.exploration, serving.session_cookie)

    # Fields of query models (``Annotated[Model, Query()]`` and GET /recommend's own parsing)
    def k_field(self, default: int) -> Any:
        return Field(default, ge=1, le=self.max_k, description="How many items to return.")

    def mmr_lambda_field(self) -> Any:
        return Field(
            None,
            ge=0.0,
            le=1.0,
            allow_inf_nan=False,
            description=f"MMR trade-off, 1 = relevance only (default {self.mmr_lambda}).",
        )

    def explore_field(self) -> Any:
        return Field(None, description=f"Reserve an exploration slot (default {self.exploration}).")

    @staticmethod
    def session_field() -> Any:
        return Field(
            None, pattern=SESSION_PATTERN, description="Apply this session's private state (see /interact)."
        )

    # Single parameters (``Annotated[int, shapes.k_query()]``)
    def k_query(self) -> Any:
        return Query(ge=1, le=self.max_k, description="How many items to return.")

    def session_cookie_param(self) -> Any:
        return Cookie(alias=self.session_cookie, description="The anonymous reader's session.")
