"""Credential modes: static keys, a re-read token file, and Entra tokens refreshed before expiry."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepscope.client.auth import (
    AZURE_AI_SCOPE,
    ApiKeyAuth,
    AzureIdentityAuth,
    BearerAuth,
    TokenFileAuth,
    make_auth,
)
from stepscope.errors import AuthError, ConfigError

SECRET = "sk-test-SECRET-0123456789"


class FakeClock:
    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@dataclass
class Token:
    token: str
    expires_on: int


class AsyncCredential:
    """Stands in for azure.identity.aio.DefaultAzureCredential."""

    def __init__(self, clock: FakeClock, lifetime: int = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.scopes: list[str] = []
        self.closed = False

    async def get_token(self, scope: str) -> Token:
        self.scopes.append(scope)
        await asyncio.sleep(0)
        return Token(f"entra-{len(self.scopes)}", int(self.clock.now) + self.lifetime)

    async def close(self) -> None:
        self.closed = True


class SyncCredential:
    """Stands in for the synchronous azure.identity.DefaultAzureCredential."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, scope: str) -> Token:
        self.calls += 1
        return Token("sync-token", 2_000_000_000)


class TestStaticKeys:
    @pytest.mark.anyio
    async def test_bearer(self) -> None:
        """A bearer key goes into `Authorization: Bearer`, trimmed."""
        assert await BearerAuth(f" {SECRET}\n").headers() == {"Authorization": f"Bearer {SECRET}"}

    @pytest.mark.anyio
    async def test_api_key(self) -> None:
        """An Azure key goes into the `api-key` header."""
        assert await ApiKeyAuth(SECRET).headers() == {"api-key": SECRET}

    def test_reprs_redact(self) -> None:
        """Neither repr nor str shows the key."""
        for auth in (BearerAuth(SECRET), ApiKeyAuth(SECRET)):
            auth.invalidate()
            assert SECRET not in repr(auth)
            assert SECRET not in str(auth)
            assert "<redacted>" in repr(auth)

    @pytest.mark.parametrize("cls", [BearerAuth, ApiKeyAuth])
    def test_empty_key_rejected(self, cls: type[BearerAuth] | type[ApiKeyAuth]) -> None:
        """A blank key is a configuration error."""
        with pytest.raises(ConfigError, match=r"api\.api_key"):
            cls("  ")


class TestTokenFile:
    @pytest.mark.anyio
    async def test_reads_and_strips(self, tmp_path: Path) -> None:
        """The file's content, without surrounding whitespace, is the bearer token."""
        path = tmp_path / "token"
        path.write_text(f"\n {SECRET} \n")
        auth = TokenFileAuth(path, clock=FakeClock())
        assert await auth.headers() == {"Authorization": f"Bearer {SECRET}"}

    @pytest.mark.anyio
    async def test_rereads_after_change(self, tmp_path: Path) -> None:
        """A rotated file is picked up once the check interval has passed, not before."""
        path = tmp_path / "token"
        path.write_text("first-token")
        clock = FakeClock()
        auth = TokenFileAuth(path, clock=clock, check_interval=1.0)
        assert await auth.headers() == {"Authorization": "Bearer first-token"}
        path.write_text("second-token-longer")
        assert await auth.headers() == {"Authorization": "Bearer first-token"}
        clock.now += 1.0
        assert await auth.headers() == {"Authorization": "Bearer second-token-longer"}

    @pytest.mark.anyio
    async def test_same_size_rewrite_detected_by_mtime(self, tmp_path: Path) -> None:
        """A same-length rewrite is detected through the modification time."""
        path = tmp_path / "token"
        path.write_text("token-aaaa")
        auth = TokenFileAuth(path, clock=FakeClock())
        await auth.headers()
        path.write_text("token-bbbb")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        auth.invalidate()
        assert await auth.headers() == {"Authorization": "Bearer token-bbbb"}

    @pytest.mark.anyio
    async def test_unchanged_file_not_reread(self, tmp_path: Path) -> None:
        """When mtime, size and inode are unchanged the cached token is reused without reading."""
        path = tmp_path / "token"
        path.write_text("token-aaaa")
        stat = path.stat()
        clock = FakeClock()
        auth = TokenFileAuth(path, clock=clock, check_interval=0.0)
        await auth.headers()
        path.write_text("token-bbbb")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        clock.now += 5
        assert await auth.headers() == {"Authorization": "Bearer token-aaaa"}

    @pytest.mark.anyio
    async def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is an AuthError naming the path."""
        path = tmp_path / "absent"
        with pytest.raises(AuthError, match="absent"):
            await TokenFileAuth(path, clock=FakeClock()).headers()

    @pytest.mark.anyio
    async def test_empty_file(self, tmp_path: Path) -> None:
        """A whitespace-only file is an AuthError saying it is empty."""
        path = tmp_path / "token"
        path.write_text(" \n")
        with pytest.raises(AuthError, match="is empty"):
            await TokenFileAuth(path, clock=FakeClock()).headers()

    @pytest.mark.anyio
    async def test_unreadable_file(self, tmp_path: Path) -> None:
        """A file that cannot be decoded is an AuthError that does not echo its bytes."""
        path = tmp_path / "token"
        path.write_bytes(b"\xff\xfe" + SECRET.encode())
        with pytest.raises(AuthError, match="cannot be read") as info:
            await TokenFileAuth(path, clock=FakeClock()).headers()
        assert SECRET not in str(info.value)

    @pytest.mark.anyio
    async def test_repr_redacts(self, tmp_path: Path) -> None:
        """The repr names the path but never the token."""
        path = tmp_path / "token"
        path.write_text(SECRET)
        auth = TokenFileAuth(path)
        await auth.headers()
        assert SECRET not in repr(auth)
        assert str(path) in repr(auth)


class TestAzureIdentity:
    @pytest.mark.anyio
    async def test_caches_until_margin_then_refreshes(self) -> None:
        """A token is reused until 5 minutes before `expires_on`, then fetched again for the Foundry scope."""
        clock = FakeClock()
        credential = AsyncCredential(clock)
        auth = AzureIdentityAuth(credential, clock=clock)
        assert await auth.headers() == {"Authorization": "Bearer entra-1"}
        clock.now += 3600 - 301
        assert await auth.headers() == {"Authorization": "Bearer entra-1"}
        clock.now += 1
        assert await auth.headers() == {"Authorization": "Bearer entra-2"}
        assert credential.scopes == [AZURE_AI_SCOPE, AZURE_AI_SCOPE]

    @pytest.mark.anyio
    async def test_concurrent_callers_share_one_refresh(self) -> None:
        """Many simultaneous requests trigger a single token fetch."""
        clock = FakeClock()
        credential = AsyncCredential(clock)
        auth = AzureIdentityAuth(credential, clock=clock)
        results = await asyncio.gather(*(auth.headers() for _ in range(5)))
        assert len(credential.scopes) == 1
        assert {r["Authorization"] for r in results} == {"Bearer entra-1"}

    @pytest.mark.anyio
    async def test_invalidate_forces_refresh(self) -> None:
        """After a 401 the cached token is dropped."""
        clock = FakeClock()
        credential = AsyncCredential(clock)
        auth = AzureIdentityAuth(credential, clock=clock)
        await auth.headers()
        auth.invalidate()
        assert await auth.headers() == {"Authorization": "Bearer entra-2"}

    @pytest.mark.anyio
    async def test_sync_credential_runs_in_thread(self) -> None:
        """A synchronous credential works and its token is cached."""
        credential = SyncCredential()
        auth = AzureIdentityAuth(credential, scope="https://cognitiveservices.azure.com/.default", clock=FakeClock())
        assert await auth.headers() == {"Authorization": "Bearer sync-token"}
        await auth.headers()
        assert credential.calls == 1

    @pytest.mark.anyio
    async def test_credential_failure_is_auth_error(self) -> None:
        """A credential exception becomes an AuthError naming the scope and the error type."""

        class Failing:
            async def get_token(self, scope: str) -> Token:
                raise RuntimeError("DefaultAzureCredential failed to retrieve a token\nEnvironmentCredential: ...")

        with pytest.raises(AuthError, match="RuntimeError: DefaultAzureCredential failed") as info:
            await AzureIdentityAuth(Failing(), clock=FakeClock()).headers()
        assert AZURE_AI_SCOPE in str(info.value)
        assert "EnvironmentCredential" not in str(info.value)

    @pytest.mark.anyio
    async def test_unusable_token(self) -> None:
        """A credential result without a token string is an AuthError."""

        class Odd:
            def get_token(self, scope: str) -> object:
                return object()

        with pytest.raises(AuthError, match="no usable token"):
            await AzureIdentityAuth(Odd(), clock=FakeClock()).headers()

    @pytest.mark.anyio
    async def test_injected_credential_not_closed(self) -> None:
        """`aclose()` leaves a caller's credential open and the repr never shows the token."""
        clock = FakeClock()
        credential = AsyncCredential(clock)
        auth = AzureIdentityAuth(credential, clock=clock)
        await auth.headers()
        await auth.aclose()
        assert credential.closed is False
        assert "entra-1" not in repr(auth)

    @pytest.mark.anyio
    async def test_default_credential_is_created_lazily_and_closed(self) -> None:
        """Without a credential, DefaultAzureCredential is built only on demand and `aclose()` closes it."""
        auth = make_auth("azure-identity", clock=FakeClock())
        assert isinstance(auth, AzureIdentityAuth)
        await auth.aclose()  # nothing created yet: a no-op
        credential = AzureIdentityAuth._default_credential()
        assert type(credential).__name__ == "DefaultAzureCredential"
        owned = AzureIdentityAuth(clock=FakeClock())
        owned._credential = credential  # what the first refresh would store
        await owned.aclose()
        assert owned._credential is None
        await owned.aclose()


class TestMakeAuth:
    @pytest.mark.anyio
    async def test_modes(self, tmp_path: Path) -> None:
        """Each STEPSCOPE_AUTH mode builds its class."""
        path = tmp_path / "t"
        path.write_text("file-token")
        assert await make_auth("bearer", key="k-123").headers() == {"Authorization": "Bearer k-123"}
        assert await make_auth("api-key", key="k-123").headers() == {"api-key": "k-123"}
        assert await make_auth("token-file", token_file=path).headers() == {"Authorization": "Bearer file-token"}

    @pytest.mark.parametrize(
        ("mode", "kwargs", "field"),
        [("bearer", {}, "api.api_key"), ("api-key", {"key": " "}, "api.api_key"), ("token-file", {}, "api.token_file")],
    )
    def test_missing_settings(self, mode: str, kwargs: dict[str, Any], field: str) -> None:
        """A mode without its setting is a ConfigError naming the setting."""
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            make_auth(mode, **kwargs)

    def test_unknown_mode(self) -> None:
        """An unknown mode lists the valid ones."""
        with pytest.raises(ConfigError, match="azure-identity"):
            make_auth("kerberos")
