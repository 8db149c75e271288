"""Tenants, bearer tokens and the principal a request acts for."""

from __future__ import annotations

from edgenode.auth.tokens import DEFAULT_TENANT, MIGRATIONS, Auth, IssuedToken, Principal, validate_tenant

__all__ = ["DEFAULT_TENANT", "MIGRATIONS", "Auth", "IssuedToken", "Principal", "validate_tenant"]
