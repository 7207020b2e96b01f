"""Shared quota files are named by an HMAC of the API key under a local random salt: a
directory listing cannot confirm a guessed key offline (docs/security.md)."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from optisync.errors import StorageError
from optisync.optimove.quota import SALT_NAME, quota_path

KEY = "REST-KEY-abc123"


def test_quota_file_name_does_not_confirm_a_guessed_key(tmp_path: Path) -> None:
    path = quota_path(tmp_path, KEY, "general")
    # the attack: hash the guess and look for it in the listing
    guess = hashlib.sha256(KEY.encode()).hexdigest()
    assert guess[:16] not in path.name and guess[:32] not in path.name
    assert KEY not in path.name
    salt = tmp_path / "quota" / SALT_NAME
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    assert stat.S_IMODE(salt.parent.stat().st_mode) == 0o700
    # the same machine finds the same file again; another salt gives another name
    assert quota_path(tmp_path, KEY, "general") == path
    assert quota_path(tmp_path, KEY, "transactional") != path
    assert quota_path(tmp_path, "other-key", "general") != path
    assert quota_path(tmp_path / "elsewhere", KEY, "general").name != path.name


def test_concurrent_first_uses_agree_on_one_salt(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda _: quota_path(tmp_path, KEY, "general"), range(32)))
    assert len(names) == 1
    assert sorted(os.listdir(tmp_path / "quota")) == [SALT_NAME]


def test_a_planted_salt_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "known-salt"
    target.write_text("0" * 64)
    (tmp_path / "quota").mkdir()
    (tmp_path / "quota" / SALT_NAME).symlink_to(target)
    with pytest.raises(StorageError):
        quota_path(tmp_path, KEY, "general")
