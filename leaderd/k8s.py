"""Kubernetes outputs: label this pod `KEY=true|false` and record Events on transitions.

The `kubernetes` client (extra `k8s`) is imported only when these outputs are used.
Its blocking calls run in a worker thread, off the election loop; failures are
retried with backoff, logged once per change of state and counted, and never
change the election.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections import deque
from typing import Any

from .election import LOSS_REASONS, ElectionObserver, Term

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: Attempts per Event before it is dropped (labels are retried until they stick).
EVENT_ATTEMPTS = 3


class KubeSetupError(Exception):
    """Kubernetes outputs were asked for but cannot work; one line for the user."""


def pod_namespace(env: dict[str, str] | None = None) -> str | None:
    """POD_NAMESPACE, else the service account's namespace file."""
    env = dict(os.environ if env is None else env)
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def load_api() -> Any:
    """A CoreV1Api from in-cluster config, else from kubeconfig."""
    try:
        from kubernetes import client
        from kubernetes import config as kube_config
    except ImportError as exc:
        raise KubeSetupError(
            "the kubernetes client is not installed: pip install 'leaderd[k8s]'"
        ) from exc
    # Through Any: whether these are typed depends on the kubernetes client's release.
    config: Any = kube_config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise KubeSetupError(f"no in-cluster config and no usable kubeconfig: {exc}") from exc
    return client.CoreV1Api()


class KubeObserver(ElectionObserver):
    """Keeps the pod label in step with leadership and records transition Events."""

    def __init__(
        self,
        api: Any,
        pod: str,
        namespace: str,
        label: str | None,
        events: bool,
        log: Any,
        errors: Any,
        election: str,
    ) -> None:
        self.api = api
        self.pod = pod
        self.namespace = namespace
        self.label = label
        self.events = events
        self.log = log
        self.errors = errors  # a prometheus Counter child
        self.election = election
        self._want: str | None = "false" if label else None
        self._have: str | None = None
        self._events: deque[tuple[str, str, str]] = deque(maxlen=100)
        self._wake = asyncio.Event()
        self._applied = asyncio.Event()
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._pod_uid: str | None = None
        self._event_tries = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leaderd-k8s")
        self._wake.set()

    # -- observer hooks (inline in the election loop: only record the wish) ----------
    def on_started_leading(self, term: Term) -> None:
        self._set_label("true")
        self._event(
            "Normal",
            "LeaderElected",
            f"{self.pod} became leader of {self.election} (token {term.fencing_token})",
        )

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        self._set_label("false")
        kind = "Warning" if reason in LOSS_REASONS else "Normal"
        self._event(kind, "LeaderLost" if reason in LOSS_REASONS else "LeaderReleased",
                    f"{self.pod} stopped leading {self.election} ({reason}, token "
                    f"{term.fencing_token})")  # fmt: skip

    async def stepped_down(self, term: Term, reason: str, budget: float) -> None:
        """Wait (at most `budget` s) until the label says false, before the release."""
        if self.label is None or self._have == "false":
            return
        self._applied.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._applied.wait(), max(0.0, budget))
        except TimeoutError:
            self.log.warning("k8s_label_not_cleared_before_release", label=self.label)

    def _set_label(self, value: str) -> None:
        if self.label is not None:
            self._want = value
            self._wake.set()

    def _event(self, kind: str, reason: str, message: str) -> None:
        if self.events:
            self._events.append((kind, reason, message))
            self._wake.set()

    # -- worker ------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            ok = await self._apply()
            if ok:
                backoff = 0.5
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self._wake.set()

    async def _apply(self) -> bool:
        """Push the wanted label and queued Events; False if something must be retried."""
        try:
            want = self._want
            if want is not None and want != self._have:
                await asyncio.to_thread(self._patch_label, want)
                self._have = want
                self.log.info("k8s_label_set", label=self.label, value=want)
            if self._have == self._want:
                self._applied.set()
            while self._events:
                kind, reason, message = self._events[0]
                await asyncio.to_thread(self._create_event, kind, reason, message)
                self._events.popleft()
        except Exception as exc:
            self.errors.inc()
            if not self._failing:
                self.log.warning("k8s_api_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self._failing = True
            if self._events:
                self._drop_stale_event()
            return False
        if self._failing:
            self.log.info("k8s_api_recovered")
        self._failing = False
        return True

    def _drop_stale_event(self) -> None:
        tries = self._event_tries + 1
        if tries >= EVENT_ATTEMPTS:
            self._events.popleft()
            tries = 0
        self._event_tries = tries

    def _patch_label(self, value: str) -> None:
        assert self.label is not None
        body = {"metadata": {"labels": {self.label: value}}}
        pod = self.api.patch_namespaced_pod(self.pod, self.namespace, body)
        uid = getattr(getattr(pod, "metadata", None), "uid", None)
        if isinstance(uid, str):
            self._pod_uid = uid

    def _create_event(self, kind: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.pod}.leaderd-", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": self.pod,
                               "namespace": self.namespace, "uid": self._pod_uid},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "leaderd"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": "leaderd",
            "reportingInstance": self.pod,
        }  # fmt: skip
        self.api.create_namespaced_event(self.namespace, body)

    async def close(self, timeout: float = 2.0) -> None:
        """Make the label say false (bounded by `timeout`), flush Events, stop."""
        self._set_label("false")
        if self._task is not None:
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline:
                if self._have == self._want and not self._events:
                    break
                await asyncio.sleep(0.02)
            self._task.cancel()
            await asyncio.wait({self._task})
