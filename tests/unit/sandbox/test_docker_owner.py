"""Telling a live proxy from a dead one by the labels on its containers."""

from __future__ import annotations

import dataclasses
import os

from mcp_sandbox_proxy.sandbox._docker_owner import (
    PID_LABEL,
    Owner,
    current_owner,
    process_start_ticks,
)


def test_an_owner_survives_the_trip_through_labels() -> None:
    """Labels written for an owner read back as the same owner."""
    me = current_owner()

    assert Owner.from_labels(me.labels()) == me
    assert me.pid == os.getpid()


def test_labels_that_do_not_name_an_owner_read_as_none() -> None:
    """Missing or non-numeric owner labels give ``None``, not an error."""
    labels = current_owner().labels()

    assert Owner.from_labels({}) is None
    assert Owner.from_labels({**labels, PID_LABEL: "twelve"}) is None


def test_this_process_is_alive() -> None:
    """An owner that is this very process is not dead."""
    me = current_owner()

    assert not me.is_dead(me)


def test_a_process_that_exited_is_dead() -> None:
    """A child that has exited and been reaped is dead, as its labels say."""
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(release_read, 1)
        os._exit(0)

    started = process_start_ticks(pid)
    os.write(release_write, b"x")
    os.waitpid(pid, 0)
    os.close(release_read)
    os.close(release_write)
    me = current_owner()

    assert started is not None
    assert dataclasses.replace(me, pid=pid, started=started).is_dead(me)


def test_a_reused_pid_with_another_start_time_is_dead() -> None:
    """A live pid that started at another time is another process: the owner died."""
    me = current_owner()

    assert dataclasses.replace(me, started=me.started - 1).is_dead(me)


def test_an_owner_from_an_earlier_boot_is_dead() -> None:
    """Whatever its pid, an owner from another boot of this host is gone."""
    me = current_owner()

    assert dataclasses.replace(me, boot="another-boot").is_dead(me)


def test_an_owner_on_another_host_is_never_declared_dead() -> None:
    """Pids of another host mean nothing here, so its containers are left alone."""
    me = current_owner()
    elsewhere = dataclasses.replace(me, host="other-host", pid=1, started=0)

    assert not elsewhere.is_dead(me)
