"""Where networks are defined: NetworkAttachmentDefinitions and the pod, from the
Kubernetes API or, without a kubeconfig, from files in `confDir`.

The API is reached with the official `kubernetes` client, imported only when a kubeconfig
says there is an API (it costs about half a second). A NAD's `spec.config` is a CNI config
or config list; a NAD without one names a file in `confDir` (the config whose `name` is the
NAD's name), as Multus does. The network-status annotation goes out as a pod status patch.
"""

from __future__ import annotations

import json
import os

from pycni.errors import CNIError, InvalidConfig, TryAgainLater

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from pycni.result import Json

CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
KUBELET_CHECKPOINT = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"
REQUEST_TIMEOUT = 10.0


class Source:
    """Pods and NADs, and the pod status patch. The file source: no pods, NADs are files."""

    api = False

    def __init__(self, conf_dir: str) -> None:
        self.conf_dir = conf_dir

    def pod(self, namespace: str, name: str) -> Json | None:
        """The pod as the API holds it; None when it does not exist (or there is no API)."""
        return None

    def nad(self, namespace: str, name: str) -> Json | None:
        """The NetworkAttachmentDefinition; None when it does not exist. Without an API a
        NAD is a config file in confDir named by its `name`."""
        found = config_from_dir(self.conf_dir, name)
        if found is None:
            return None
        return {"metadata": {"name": name, "namespace": namespace},
                "spec": {"config": json.dumps(found)}}

    def patch_network_status(self, namespace: str, name: str, status: list[Json]) -> None:
        """Nothing to patch without an API."""


class KubeSource(Source):
    """The Kubernetes API, through the kubeconfig given."""

    api = True

    def __init__(self, conf_dir: str, kubeconfig: str) -> None:
        super().__init__(conf_dir)
        self.kubeconfig = kubeconfig
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            import kubernetes.client
            import kubernetes.config

            kube: Any = kubernetes
            configuration = kube.client.Configuration()
            try:
                # this file only (never KUBECONFIG or ~/.kube/config), and never written back
                kube.config.load_kube_config(config_file=self.kubeconfig,
                                             client_configuration=configuration,
                                             persist_config=False)
            except Exception as exc:  # noqa: BLE001 - the client raises many kinds here
                from pycni.log import redact

                raise InvalidConfig(f"cannot use kubeconfig {self.kubeconfig}: "
                                    f"{redact(str(exc))}") from None
            configuration.retries = 1
            self._client = kube.client.ApiClient(configuration)
        return self._client

    def _call(self, what: str, call: Any) -> Any:
        """`call()`, None for 404, TryAgainLater when the API cannot be reached."""
        from kubernetes.client.exceptions import ApiException

        try:
            return call()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise CNIError(f"Kubernetes API: {what}: {exc.status} {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - urllib3 and socket errors alike
            from pycni.log import redact

            reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise TryAgainLater(f"Kubernetes API unreachable ({what}): {redact(reason)}") from None

    def pod(self, namespace: str, name: str) -> Json | None:
        import kubernetes.client

        core: Any = kubernetes.client.CoreV1Api(self._connect())

        def read() -> Json:
            response = core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                _request_timeout=REQUEST_TIMEOUT)
            data: Json = json.loads(response.data)
            return data

        found: Json | None = self._call(f"get pod {namespace}/{name}", read)
        return found

    def nad(self, namespace: str, name: str) -> Json | None:
        import kubernetes.client

        custom: Any = kubernetes.client.CustomObjectsApi(self._connect())
        found: Json | None = self._call(
            f"get NetworkAttachmentDefinition {namespace}/{name}",
            lambda: custom.get_namespaced_custom_object(
                "k8s.cni.cncf.io", "v1", namespace, "network-attachment-definitions", name,
                _request_timeout=REQUEST_TIMEOUT))
        return found

    def patch_network_status(self, namespace: str, name: str, status: list[Json]) -> None:
        import kubernetes.client
        from pycni.meta.multus.selection import STATUS_ANNOTATION

        core: Any = kubernetes.client.CoreV1Api(self._connect())
        body = {"metadata": {"annotations": {STATUS_ANNOTATION: json.dumps(status, indent=4)}}}
        self._call(f"patch pod {namespace}/{name} status",
                   lambda: core.patch_namespaced_pod_status(name, namespace, body,
                                                            _request_timeout=REQUEST_TIMEOUT))


def open_source(conf_dir: str, kubeconfig: str) -> Source:
    """The API when a kubeconfig is configured and present, else the files."""
    if kubeconfig and os.path.isfile(kubeconfig):
        return KubeSource(conf_dir, kubeconfig)
    return Source(conf_dir)


# --- configs --------------------------------------------------------------------------------

def read_config_file(path: str) -> Json:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except OSError as exc:
        raise InvalidConfig(f"cannot read network config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidConfig(f"network config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidConfig(f"network config {path} is not a JSON object")
    return data


def config_from_dir(conf_dir: str, name: str) -> Json | None:
    """The config file in `conf_dir` whose network `name` is `name` (first by file name)."""
    try:
        entries = sorted(os.listdir(conf_dir))
    except OSError:
        return None
    for entry in entries:
        if not entry.endswith(CONFIG_SUFFIXES):
            continue
        try:
            data = read_config_file(os.path.join(conf_dir, entry))
        except InvalidConfig:
            continue
        if data.get("name") == name:
            return data
    return None


def config_from_path(path: str) -> Json | None:
    """A cluster network given as a file, or as a directory (its first config file)."""
    if os.path.isfile(path):
        return read_config_file(path)
    if os.path.isdir(path):
        for entry in sorted(os.listdir(path)):
            if entry.endswith(CONFIG_SUFFIXES):
                return read_config_file(os.path.join(path, entry))
    return None


def nad_config(nad: Json, conf_dir: str) -> Json:
    """The CNI config of a NAD: `spec.config`, or the confDir file named by the NAD."""
    metadata = nad.get("metadata") or {}
    name = str(metadata.get("name", ""))
    where = f"NetworkAttachmentDefinition {metadata.get('namespace', '')}/{name}"
    raw = (nad.get("spec") or {}).get("config")
    if raw is None or raw == "":
        found = config_from_dir(conf_dir, name)
        if found is None:
            raise InvalidConfig(f"{where} has no spec.config and {conf_dir} holds no config "
                                f"named {name!r}")
        config = found
    else:
        if not isinstance(raw, str):
            raise InvalidConfig(f"{where}: spec.config must be a JSON string")
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise InvalidConfig(f"{where}: spec.config is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise InvalidConfig(f"{where}: spec.config is not a JSON object")
    config = dict(config)
    if not config.get("name"):
        config["name"] = name
    return config


def resource_name(nad: Json) -> str:
    from pycni.meta.multus.selection import RESOURCE_ANNOTATION

    annotations = (nad.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(RESOURCE_ANNOTATION) or "")


def allocated_devices(pod_uid: str, resource: str,
                      checkpoint: str = KUBELET_CHECKPOINT) -> list[str]:
    """Device IDs the kubelet's device manager gave the pod for `resource`, from its
    checkpoint file (what Multus reads when the pod-resources socket is absent)."""
    if not pod_uid or not resource:
        return []
    try:
        with open(checkpoint, "rb") as handle:
            data = json.loads(handle.read())
        entries = data["Data"]["PodDeviceEntries"] or []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    devices: list[str] = []
    for entry in entries:
        if entry.get("PodUID") != pod_uid or entry.get("ResourceName") != resource:
            continue
        ids = entry.get("DeviceIDs") or []
        if isinstance(ids, dict):  # newer kubelets: per NUMA node
            for numa in sorted(ids):
                devices += [str(i) for i in ids[numa] or []]
        else:
            devices += [str(i) for i in ids]
    return devices
