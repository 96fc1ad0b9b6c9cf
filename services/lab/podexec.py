"""``cilia exec``: run a command inside a pod's network namespace, like ``kubectl exec``.

The target is ``POD``, ``pod/POD`` or ``deploy/NAME`` (``deployment/NAME``); a deployment
resolves to its first pod by name, as kubectl does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from services.lab import netns as ns
from services.lab.errors import LabError, PodNotFoundError
from services.lab.kubelet import Kubelet
from services.lab.podspec import DEFAULT_NAMESPACE
from services.lab.topology import DEFAULT_LAB

DEPLOY_PREFIXES = ("deploy/", "deployment/", "deployments/")
POD_PREFIXES = ("pod/", "pods/", "po/")


def resolve_pod(target: str, namespace: str = DEFAULT_NAMESPACE,
                lab: str = DEFAULT_LAB) -> tuple[str, str]:
    """The (pod name, netns name) a target designates.

    Raises:
        PodNotFoundError: no such pod, or the deployment has no pods.
    """
    kubelet = Kubelet(lab)
    for prefix in DEPLOY_PREFIXES:
        if target.startswith(prefix):
            name = target[len(prefix):]
            pods = kubelet.deployment_pods(namespace, name)
            if not pods:
                raise PodNotFoundError(f"deployment {namespace}/{name}: no pods in lab {lab}")
            pod = str(pods[0]["metadata"]["name"])
            return pod, kubelet.pod_netns(namespace, pod)
    for prefix in POD_PREFIXES:
        if target.startswith(prefix):
            target = target[len(prefix):]
            break
    return target, kubelet.pod_netns(namespace, target)


def exec_in_pod(target: str, argv: Sequence[str], *, namespace: str = DEFAULT_NAMESPACE,
                lab: str = DEFAULT_LAB, capture: bool = False,
                timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in the pod's netns and wait for it.

    Args:
        target: ``POD``, ``pod/POD`` or ``deploy/NAME``.
        capture: capture stdout/stderr (else they are inherited from the caller).
        timeout: kill the command after this many seconds.

    Returns:
        The completed process (``returncode`` is the command's exit code).

    Raises:
        PodNotFoundError: the target does not exist.
        LabError: the command cannot be started; subprocess.TimeoutExpired on timeout.
    """
    pod, netns = resolve_pod(target, namespace, lab)
    return exec_in_netns(netns, argv, capture=capture, timeout=timeout,
                         resolv_conf=Kubelet(lab).pod_resolv_conf(namespace, pod))


def resolve_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with its program found on ``$PATH`` or beside this Python (the venv's bin,
    where ``cilia-connect`` lives even when the venv is not activated)."""
    search = os.pathsep.join(filter(None, [os.environ.get("PATH", ""),
                                           str(Path(sys.executable).parent)]))
    found = shutil.which(argv[0], path=search) if "/" not in argv[0] else None
    return [found or argv[0], *argv[1:]]


def exec_in_netns(netns: str, argv: Sequence[str], *, capture: bool = True,
                  timeout: float | None = None, resolv_conf: str | None = None,
                  ) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in any lab netns (a node, the external host) and wait for it.

    ``resolv_conf`` (a pod's) is bind-mounted on /etc/resolv.conf in a private mount
    namespace of the command, so names resolve through the cluster DNS.
    """
    if not argv:
        raise LabError("exec: no command given")
    pipe = subprocess.PIPE if capture else None
    try:
        proc = ns.spawn(netns, resolve_command(argv), stdout=pipe, stderr=pipe,
                        resolv_conf=resolv_conf)
    except (FileNotFoundError, PermissionError) as exc:
        raise LabError(f"exec in netns {netns}: cannot run {argv[0]!r}: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
