"""The key ring read straight from a Kubernetes Secret volume, as kubelet lays it out.

kubelet publishes a Secret volume atomically: the files live in a timestamped directory,
``..data`` is a symlink to it, and each visible name (``keyring.json``) is a symlink into
``..data``. An update writes a new directory and renames a new ``..data`` symlink over the
old one. These tests build that layout in a temporary directory and swap it the same way.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault import KeyRingMismatch, Vault
from vault.crypto import new_key
from vault.errors import KeyRingError, UnknownKeyVersion
from vault.keys.ring import (
    KeyRing,
    LocalKekProvider,
    _secret_volume_file,
    init_keyring,
    rotate_keyring,
)

SERVICE_ID = 10001  # the image's uid and gid, and the Deployment's runAsGroup and fsGroup


def publish(mount: Path, files: dict[str, bytes], *, mode: int = 0o600) -> None:
    """Write ``files`` into ``mount`` the way kubelet's atomic writer updates a volume."""
    mount.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S")
    target = mount / f"..{stamp}.{secrets.token_hex(4)}"
    target.mkdir()
    for name, data in files.items():
        (target / name).write_bytes(data)
        os.chmod(target / name, mode)
    data_link = mount / "..data"
    old = data_link.resolve() if data_link.is_symlink() else None
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, data_link)
    for name in files:
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(Path("..data") / name)
    if old is not None:
        shutil.rmtree(old)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """Where the operator's Job keeps its working copy of the ring."""
    path = tmp_path / "job"
    path.mkdir(mode=0o700)
    return path


def test_a_rotation_published_by_symlink_swap_reaches_a_running_provider(
    tmp_path: Path, scratch: Path
) -> None:
    """After kubelet swaps ``..data``, a serving provider unwraps keys of the new version."""
    ring_file = scratch / "keyring.json"
    init_keyring(ring_file)
    mount = tmp_path / "secret"
    publish(mount, {"keyring.json": ring_file.read_bytes()})
    serving = LocalKekProvider.from_file(mount / "keyring.json")
    assert serving.active_version == 1

    rotate_keyring(ring_file)
    publish(mount, {"keyring.json": ring_file.read_bytes()})
    # Another pod already on the new ring wraps a data key with version 2 ...
    newer = LocalKekProvider(KeyRing.load(ring_file))
    dek = new_key()
    version, wrapped = newer.wrap(dek, b"aad")
    assert version == 2
    # ... and this pod, still holding version 1 only, reloads through the swapped link (as
    # the vault does on an unknown version) and reads it.
    with pytest.raises(UnknownKeyVersion):
        serving.unwrap(version, wrapped, b"aad")
    assert serving.refresh(force=True)
    assert serving.unwrap(version, wrapped, b"aad") == dek
    assert serving.active_version == 2


def test_a_swap_to_a_foreign_ring_is_refused_and_the_ring_in_force_stays(
    tmp_path: Path, scratch: Path
) -> None:
    """A Secret replaced by another ring entirely does not replace the verified one."""
    init_keyring(scratch / "keyring.json")
    mount = tmp_path / "secret"
    publish(mount, {"keyring.json": (scratch / "keyring.json").read_bytes()})
    serving = LocalKekProvider.from_file(mount / "keyring.json")
    other = scratch / "other"
    other.mkdir(mode=0o700)
    init_keyring(other / "keyring.json")
    rotate_keyring(other / "keyring.json")
    publish(mount, {"keyring.json": (other / "keyring.json").read_bytes()})
    assert not serving.refresh(force=True)
    with pytest.raises(UnknownKeyVersion):
        serving.unwrap(2, b"\0" * 60, b"aad")
    assert serving.active_version == 1


def test_a_group_readable_ring_owned_by_the_process_is_still_refused(tmp_path: Path) -> None:
    """The Secret-volume allowance is for root-owned files only: a 0640 ring of ours fails."""
    init_keyring(tmp_path / "s" / "keyring.json")
    mount = tmp_path / "secret"
    publish(mount, {"keyring.json": (tmp_path / "s" / "keyring.json").read_bytes()}, mode=0o640)
    with pytest.raises(KeyRingError, match="allows group or world access"):
        KeyRing.load(mount / "keyring.json")


def _stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, gid, 100, 0, 0, 0))


def test_kubelet_secret_files_for_the_service_group_are_accepted() -> None:
    """root:fsGroup 0440 (defaultMode 0400 or 0440 under fsGroup) is what kubelet writes."""
    assert _secret_volume_file(_stat(0o440, 0, SERVICE_ID), SERVICE_ID)
    assert _secret_volume_file(_stat(0o040, 0, SERVICE_ID), SERVICE_ID)


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "egid"),
    [
        (0o444, 0, SERVICE_ID, SERVICE_ID),  # world-readable
        (0o460, 0, SERVICE_ID, SERVICE_ID),  # group-writable
        (0o640, 0, SERVICE_ID, SERVICE_ID),  # owner-writable: not a Secret volume file
        (0o440, SERVICE_ID, SERVICE_ID, SERVICE_ID),  # not root-owned
        (0o440, 0, 4242, SERVICE_ID),  # another group
        (0o440, 0, 0, 0),  # the root group
        (0o4440, 0, SERVICE_ID, SERVICE_ID),  # setuid bit
    ],
)
def test_other_shared_layouts_are_refused(mode: int, uid: int, gid: int, egid: int) -> None:
    """Anything but a read-only root-owned file of our own non-root group is refused."""
    assert not _secret_volume_file(_stat(mode, uid, gid), egid)


@given(
    mode=st.integers(min_value=0, max_value=0o7777),
    uid=st.sampled_from([0, 1, SERVICE_ID, 65534]),
    gid=st.sampled_from([0, 1, SERVICE_ID, 65534]),
    egid=st.sampled_from([0, 1, SERVICE_ID, 65534]),
)
def test_an_accepted_shared_file_is_never_writable_or_world_readable(
    mode: int, uid: int, gid: int, egid: int
) -> None:
    """Whatever is accepted is root-owned, read-only, unreadable to the world, our group's."""
    if _secret_volume_file(_stat(mode, uid, gid), egid):
        assert mode & 0o7337 == 0
        assert uid == 0
        assert gid == egid != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lay files out as kubelet does")
def test_a_kubelet_secret_volume_of_the_service_group_loads_and_follows_a_swap(
    tmp_path: Path, scratch: Path
) -> None:
    """With the service's group, a root:10001 0440 Secret-volume ring loads and follows a swap."""
    ring_file = scratch / "keyring.json"
    init_keyring(ring_file)
    mount = tmp_path / "secret"

    def publish_as_kubelet() -> None:
        publish(mount, {"keyring.json": ring_file.read_bytes()}, mode=0o440)
        for path in mount.rglob("*"):
            os.lchown(path, 0, SERVICE_ID)

    publish_as_kubelet()
    with pytest.raises(KeyRingError, match="allows group or world access"):
        KeyRing.load(mount / "keyring.json")  # as the root group: not our group's file
    # The effective group decides (the effective user stays root, so it can switch back).
    os.setegid(SERVICE_ID)
    try:
        serving = LocalKekProvider.from_file(mount / "keyring.json")
        rotate_keyring(ring_file)
        publish_as_kubelet()
        assert serving.refresh(force=True)
        assert serving.active_version == 2
    finally:
        os.setegid(0)


async def test_a_serving_vault_follows_a_rotation_recorded_by_a_job_once_its_volume_updates(
    vault_url: str, tmp_path: Path, scratch: Path
) -> None:
    """The ring check (what /readyz runs) fails only until kubelet swaps the ring in."""
    ring_file = scratch / "keyring.json"
    init_keyring(ring_file)
    mount = tmp_path / "secret"
    publish(mount, {"keyring.json": ring_file.read_bytes()})
    serving = await Vault.open(vault_url, LocalKekProvider.from_file(mount / "keyring.json"))
    try:
        await serving.check_key_ring()
        # The rotation Job: its own copy of the ring, rotated and recorded in the vault.
        rotate_keyring(ring_file)
        job = await Vault.open(vault_url, LocalKekProvider.from_file(ring_file))
        await job.close()
        with pytest.raises(KeyRingMismatch, match="lacks key version 2"):
            await serving.check_key_ring()
        # kubelet publishes the patched Secret; nothing else touches the serving process.
        publish(mount, {"keyring.json": ring_file.read_bytes()})
        await serving.check_key_ring()
        assert serving.keys.active_version == 2
    finally:
        await serving.close()
